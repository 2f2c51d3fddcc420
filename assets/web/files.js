// File transfer with other peers on each connection's `huddle-files` data channel, in the same
// protocol as Huddle's native client (docs/protocol.md, "File transfer"): JSON control messages,
// binary chunks [0x01, id u64, offset u64, data], progress for flow control, SHA-256 checked
// before a file is handed to the browser's download.

import { Sha256 } from './sha256.js';

export const CHANNEL_LABEL = 'huddle-files';
const HEADER = 17;
const CHUNK_DATA = 65536 - HEADER;
// What the sender keeps in flight beyond the receiver's last progress, and in the channel.
const WINDOW = 8 * 1024 * 1024;
const CHANNEL_HIGH = 128 * 1024;
const PROGRESS_EVERY = 512 * 1024;
const READ_BLOCK = 1024 * 1024;
// A guest's browser holds a received file in memory (as blobs) until it is saved.
export const MAX_INCOMING = 2 * 1024 * 1024 * 1024;
const MAX_UNANSWERED = 64;
const MAX_CONTROL = 4096;

const FINISHED = new Set(['complete', 'declined', 'cancelled', 'failed']);

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

const isId = (id) => typeof id === 'string' && /^[0-9a-f]{16}$/i.test(id);
const isCount = (n) => Number.isSafeInteger(n) && n >= 0;

/** The protocol's rules for a name saved on the receiver's disk (docs/protocol.md, "Saving"). */
export function safeName(offered) {
  let name = String(offered).split(/[/\\]/).pop();
  name = name.replace(/[\u0000-\u001f\u007f:*?"<>|]/g, '_');
  name = name.replace(/^\.+/, '').replace(/[. ]+$/, '');
  if (/^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$/i.test(name)) name = '_' + name;
  if (name === '') name = 'received file';
  return name.slice(0, 200);
}

/**
 * All transfers of this page, in both directions, by id. `onchange(transfer)` is called when a
 * transfer appears or changes (progress at most a few times a second).
 */
export class Transfers {
  constructor(onchange) {
    this.onchange = onchange;
    this.all = new Map();
    this.channels = new Map(); // peer id -> open RTCDataChannel
  }

  /** A peer's file channel opened: use it, and offer again whatever was left unfinished. */
  attach(peer, channel) {
    channel.binaryType = 'arraybuffer';
    channel.bufferedAmountLowThreshold = CHANNEL_HIGH / 2;
    this.channels.set(peer, channel);
    channel.onmessage = (ev) => {
      try {
        if (typeof ev.data === 'string') this.onControl(peer, ev.data);
        else this.onChunk(peer, ev.data);
      } catch (e) {
        console.warn('file channel: ignoring a message', e);
      }
    };
    channel.onbufferedamountlow = () => this.pumpPeer(peer);
    channel.onclose = () => {
      if (this.channels.get(peer) === channel) this.channels.delete(peer);
    };
    for (const t of this.all.values()) {
      if (t.peer === peer && t.direction === 'out' && !FINISHED.has(t.state)) {
        // Same id: a receiver that has part of it answers `resume`.
        this.sendOffer(t);
      }
    }
  }

  /** The peer left the room: its unfinished transfers end. */
  peerGone(peer) {
    this.channels.delete(peer);
    for (const t of this.all.values()) {
      if (t.peer === peer && !FINISHED.has(t.state)) this.finish(t, 'failed', 'they left the room');
    }
  }

  /** Offers `file` (a File) to `peer`; it goes out when their file channel is open. */
  send(peer, file, peerName) {
    const t = {
      id: randomId(), peer, peerName, direction: 'out', name: file.name, size: file.size,
      mediaType: file.type || undefined, file, state: 'offered', done: 0, acked: 0,
      hash: new Sha256(), hashedTo: 0, block: null, blockStart: 0, pumping: false,
      doneSent: false, reason: '',
    };
    this.all.set(t.id, t);
    if (this.channels.has(peer)) this.sendOffer(t);
    this.changed(t, true);
    return t;
  }

  accept(id) {
    const t = this.all.get(id);
    if (!t || t.direction !== 'in' || t.state !== 'offered') return;
    t.state = 'receiving';
    this.control(t.peer, { type: 'accept', id, offset: 0 });
    this.changed(t, true);
  }

  decline(id) {
    const t = this.all.get(id);
    if (!t || t.direction !== 'in' || t.state !== 'offered') return;
    this.control(t.peer, { type: 'decline', id, reason: 'declined' });
    this.finish(t, 'declined', 'you declined');
  }

  cancel(id) {
    const t = this.all.get(id);
    if (!t || FINISHED.has(t.state)) return;
    const by = t.direction === 'out' ? 'the sender' : 'the receiver';
    this.control(t.peer, { type: 'cancel', id, reason: `cancelled by ${by}` });
    this.finish(t, 'cancelled', 'you cancelled');
  }

  // --- wire ---

  control(peer, msg) {
    const channel = this.channels.get(peer);
    if (!channel || channel.readyState !== 'open') return false;
    channel.send(JSON.stringify(msg));
    return true;
  }

  sendOffer(t) {
    const offer = { type: 'offer', id: t.id, name: t.name, size: t.size };
    if (t.mediaType) offer.media_type = t.mediaType;
    if (this.control(t.peer, offer) && t.state !== 'paused') {
      t.state = 'offered';
      this.changed(t, true);
    }
  }

  onControl(peer, text) {
    if (text.length > MAX_CONTROL) return;
    const m = JSON.parse(text);
    if (!m || typeof m !== 'object' || !isId(m.id)) return;
    const id = m.id.toLowerCase();
    const t = this.all.get(id);
    if (m.type === 'offer') return this.onOffer(peer, id, t, m);
    if (!t || t.peer !== peer) return;
    const out = t.direction === 'out';
    switch (m.type) {
      case 'accept':
        if (out && isCount(m.offset) && t.state === 'offered') this.startSending(t, m.offset);
        break;
      case 'resume':
        if (out && isCount(m.offset) && ['offered', 'paused', 'sending'].includes(t.state)) {
          this.startSending(t, m.offset);
        }
        break;
      case 'progress':
        if (out && isCount(m.received)) {
          t.acked = Math.max(t.acked, m.received);
          this.changed(t, false);
          this.pump(t);
        }
        break;
      case 'pause':
        if (out && t.state === 'sending') {
          t.state = 'paused';
          t.reason = String(m.reason || '');
          this.changed(t, true);
        }
        break;
      case 'complete':
        if (out) this.finish(t, 'complete', '');
        break;
      case 'decline':
        if (out) this.finish(t, 'declined', `declined: ${String(m.reason || '')}`);
        break;
      case 'cancel':
        this.finish(t, 'cancelled', String(m.reason || 'cancelled'));
        break;
      case 'done':
        if (!out) this.onDone(t, m);
        break;
    }
  }

  onOffer(peer, id, known, m) {
    if (known) {
      if (known.peer !== peer || known.direction !== 'in') return;
      // The sender offers again after a reconnect: go on from what we hold.
      if (m.size !== known.size) {
        this.fail(known, 'offered again with another size');
      } else if (known.state === 'receiving' || known.state === 'paused') {
        known.state = 'receiving';
        this.control(peer, { type: 'resume', id, offset: known.done });
      } else if (known.state === 'complete') {
        this.control(peer, { type: 'complete', id });
      } else if (FINISHED.has(known.state)) {
        this.control(peer, { type: 'cancel', id, reason: known.reason || 'cancelled' });
      }
      return;
    }
    if (typeof m.name !== 'string' || !isCount(m.size)) return;
    const t = {
      id, peer, direction: 'in', name: m.name, size: m.size,
      mediaType: typeof m.media_type === 'string' ? m.media_type : '',
      offeredSha: typeof m.sha256 === 'string' ? m.sha256.toLowerCase() : null,
      state: 'offered', done: 0, lastProgress: 0, hash: new Sha256(), parts: [], partBytes: 0,
      blobs: [], url: null, reason: '',
    };
    const unanswered = [...this.all.values()].filter((x) => x.direction === 'in' && x.state === 'offered');
    if (m.size > MAX_INCOMING) {
      this.control(peer, { type: 'decline', id, reason: 'too large for a browser guest (2 GiB at most)' });
      return;
    }
    if (unanswered.length >= MAX_UNANSWERED) {
      this.control(peer, { type: 'decline', id, reason: 'too many offers waiting for an answer' });
      return;
    }
    this.all.set(id, t);
    this.changed(t, true);
  }

  onChunk(peer, buffer) {
    if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < HEADER || buffer.byteLength > 65536) return;
    const view = new DataView(buffer);
    if (view.getUint8(0) !== 1) return;
    const id = view.getBigUint64(1).toString(16).padStart(16, '0');
    const offset = Number(view.getBigUint64(9));
    const t = this.all.get(id);
    if (!t || t.peer !== peer || t.direction !== 'in' || t.state !== 'receiving') return;
    const data = new Uint8Array(buffer, HEADER);
    if (offset !== t.done) return this.fail(t, `a chunk arrived for byte ${offset}, expected ${t.done}`);
    if (t.done + data.length > t.size) return this.fail(t, 'more data than the offer announced');
    t.hash.update(data);
    t.parts.push(data);
    t.partBytes += data.length;
    t.done += data.length;
    // Many small arrays become one blob now and then, which the browser may keep on disk.
    if (t.partBytes >= 16 * 1024 * 1024) {
      t.blobs.push(new Blob(t.parts));
      t.parts = [];
      t.partBytes = 0;
    }
    if (t.done - t.lastProgress >= PROGRESS_EVERY || t.done === t.size) {
      t.lastProgress = t.done;
      this.control(peer, { type: 'progress', id, received: t.done });
    }
    this.changed(t, false);
  }

  onDone(t, m) {
    if (t.state !== 'receiving' || typeof m.sha256 !== 'string') return;
    if (t.done !== t.size) return this.fail(t, `the file arrived short (${t.done} of ${t.size} bytes)`);
    const hash = t.hash.hex();
    if (hash !== m.sha256.toLowerCase() || (t.offeredSha && t.offeredSha !== hash)) {
      return this.fail(t, 'the file arrived damaged (its SHA-256 does not match)');
    }
    t.sha256 = hash;
    const blob = new Blob([...t.blobs, ...t.parts], { type: t.mediaType || 'application/octet-stream' });
    t.blobs = [];
    t.parts = [];
    t.url = URL.createObjectURL(blob);
    t.savedAs = safeName(t.name);
    this.control(t.peer, { type: 'complete', id: t.id });
    this.finish(t, 'complete', '');
    save(t.url, t.savedAs);
  }

  fail(t, reason) {
    this.control(t.peer, { type: 'cancel', id: t.id, reason });
    this.finish(t, 'failed', reason);
  }

  finish(t, state, reason) {
    if (FINISHED.has(t.state)) return;
    t.state = state;
    t.reason = reason;
    t.file = null;
    t.block = null;
    if (state !== 'complete') {
      t.parts = [];
      t.blobs = [];
    }
    this.changed(t, true);
  }

  // --- sending ---

  startSending(t, offset) {
    if (offset > t.size) return this.fail(t, 'asked to go on past the end of the file');
    t.state = 'sending';
    // A pump still waiting on a read from before sees this and starts over.
    t.generation = (t.generation || 0) + 1;
    t.done = offset;
    t.acked = Math.max(t.acked, offset);
    t.doneSent = false;
    if (t.hashedTo > offset) {
      // The receiver holds less than we hashed: hash again from the start up to its offset.
      t.hash = new Sha256();
      t.hashedTo = 0;
    }
    this.changed(t, true);
    this.pump(t);
  }

  pumpPeer(peer) {
    for (const t of this.all.values()) if (t.peer === peer && t.state === 'sending') this.pump(t);
  }

  async read(t, start) {
    const end = Math.min(t.size, start + READ_BLOCK);
    t.block = new Uint8Array(await t.file.slice(start, end).arrayBuffer());
    t.blockStart = start;
  }

  async pump(t) {
    if (t.pumping) return;
    t.pumping = true;
    const generation = t.generation;
    const stale = () => t.generation !== generation;
    let again = false;
    try {
      while (t.hashedTo < t.done) {
        await this.read(t, t.hashedTo);
        if ((again = stale())) return;
        const take = t.block.subarray(0, Math.min(t.block.length, t.done - t.hashedTo));
        t.hash.update(take);
        t.hashedTo += take.length;
      }
      while (t.state === 'sending' && t.done < t.size) {
        const channel = this.channels.get(t.peer);
        if (!channel || channel.readyState !== 'open') return;
        // Woken again by `bufferedamountlow` or the next progress.
        if (channel.bufferedAmount > CHANNEL_HIGH || t.done - t.acked >= WINDOW) return;
        const inBlock = t.block && t.done >= t.blockStart && t.done < t.blockStart + t.block.length;
        if (!inBlock) {
          await this.read(t, t.done);
          if ((again = stale())) return;
          continue;
        }
        const from = t.done - t.blockStart;
        const data = t.block.subarray(from, Math.min(t.block.length, from + CHUNK_DATA));
        const frame = new Uint8Array(HEADER + data.length);
        const view = new DataView(frame.buffer);
        view.setUint8(0, 1);
        view.setBigUint64(1, BigInt('0x' + t.id));
        view.setBigUint64(9, BigInt(t.done));
        frame.set(data, HEADER);
        channel.send(frame);
        t.hash.update(data);
        t.hashedTo += data.length;
        t.done += data.length;
        this.changed(t, false);
      }
      if (t.state === 'sending' && t.done === t.size && !t.doneSent) {
        t.doneSent = this.control(t.peer, { type: 'done', id: t.id, sha256: t.hash.hex() });
        if (t.doneSent) t.block = null;
      }
    } catch (e) {
      this.fail(t, `cannot read the file: ${e.message || e}`);
    } finally {
      t.pumping = false;
      if (again) this.pump(t);
    }
  }

  changed(t, always) {
    const now = performance.now();
    if (!always && t.lastShown && now - t.lastShown < 200 && t.done < t.size) return;
    t.lastShown = now;
    this.onchange(t);
  }
}

/** Hands a finished file to the browser's download (its own folder and name rules). */
export function save(url, name) {
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.rel = 'noopener';
  document.body.append(a);
  a.click();
  a.remove();
}
