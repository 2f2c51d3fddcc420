// Huddle's guest page: the room picker at `/` and the call at `/ROOM` (`?name=NICK` joins at
// once, `?token=T` carries a join token). The page owns the DOM and the local devices; the
// protocol lives in room.js (signaling and peer connections) and files.js (file transfer).

import { Room } from './room.js';
import { Transfers, save } from './files.js';

const $ = (id) => document.getElementById(id);
const wsUrl = () => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
const NAME_KEY = 'huddle.nickname';
// Errors that answer a join: the page cannot be in the room.
const REFUSALS = new Set(['room_full', 'nickname_taken', 'bad_nickname', 'bad_room_name', 'password_required',
  'wrong_password', 'token_required', 'bad_token', 'token_expired', 'token_wrong_room', 'too_many_rooms']);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function setStatus(node, text, kind = '') {
  node.textContent = text;
  node.className = `status ${kind}`;
}

function formatBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function roomPath(name, nickname) {
  const q = new URLSearchParams();
  if (nickname) q.set('name', nickname);
  const token = new URLSearchParams(location.search).get('token');
  if (token) q.set('token', token);
  const query = q.toString();
  return `/${encodeURIComponent(name)}${query ? `?${query}` : ''}`;
}

// ---------------------------------------------------------------- the room picker

function lobby() {
  $('lobby').hidden = false;
  const name = $('lobby-name');
  name.value = localStorage.getItem(NAME_KEY) || '';
  const go = (room) => {
    const nick = name.value.trim();
    if (nick) localStorage.setItem(NAME_KEY, nick);
    location.href = roomPath(room, nick);
  };
  $('new-room').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const room = $('new-room-name').value.trim();
    if (room) go(room);
  });
  const rooms = new Map();
  const render = () => {
    const list = $('room-list');
    list.replaceChildren();
    const sorted = [...rooms.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const r of sorted) {
      const full = r.people >= r.capacity;
      const li = el('li', { tabindex: '0', 'data-room': r.name, title: full ? 'Full' : 'Join' },
        el('span', {}, `${r.locked ? '🔒 ' : ''}${r.name}`),
        el('span', { class: 'muted' }, `${r.people} / ${r.capacity}`));
      li.addEventListener('click', () => go(r.name));
      li.addEventListener('keydown', (ev) => ev.key === 'Enter' && go(r.name));
      list.append(li);
    }
    $('room-list-empty').hidden = sorted.length > 0;
  };
  const ws = new WebSocket(wsUrl());
  ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', version: 1, client: 'huddle-web lobby' }));
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === 'welcome') ws.send(JSON.stringify({ type: 'subscribe_rooms' }));
    else if (msg.type === 'room_list') {
      rooms.clear();
      for (const r of msg.rooms) rooms.set(r.name, r);
      render();
    } else if (msg.type === 'room_updated') {
      rooms.set(msg.room.name, msg.room);
      render();
    } else if (msg.type === 'room_closed') {
      rooms.delete(msg.name);
      render();
    } else if (msg.type === 'error') setStatus($('lobby-status'), msg.message, 'error');
  };
  ws.onclose = () => setStatus($('lobby-status'), 'Not connected to the server. Reload to try again.', 'error');
  window.huddle = { rooms };
}

// ---------------------------------------------------------------- local devices

class LocalMedia {
  constructor() {
    this.audioTrack = null;
    this.videoTrack = null;
    this.audioOn = true;
    this.videoOn = true;
    this.problem = '';
  }

  sendingAudio() {
    return this.audioOn ? this.audioTrack : null;
  }

  sendingVideo() {
    return this.videoOn ? this.videoTrack : null;
  }

  static constraints(kind, deviceId) {
    const exact = deviceId ? { deviceId: { exact: deviceId } } : {};
    return kind === 'audio'
      ? { ...exact, echoCancellation: true, noiseSuppression: true, autoGainControl: true }
      : { ...exact, width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  }

  /** Opens the camera and microphone; either may be missing or refused. */
  async open() {
    const problems = [];
    for (const kind of ['audio', 'video']) {
      try {
        await this.acquire(kind, '');
      } catch (e) {
        problems.push(`${kind === 'audio' ? 'microphone' : 'camera'}: ${e.message || e.name}`);
        if (kind === 'audio') this.audioOn = false;
        else this.videoOn = false;
      }
    }
    this.problem = problems.join('; ');
  }

  async acquire(kind, deviceId) {
    const stream = await navigator.mediaDevices.getUserMedia({ [kind]: LocalMedia.constraints(kind, deviceId) });
    const track = stream.getTracks()[0];
    const old = kind === 'audio' ? this.audioTrack : this.videoTrack;
    if (kind === 'audio') this.audioTrack = track;
    else this.videoTrack = track;
    if (old && old !== track) old.stop();
    return track;
  }

  async devices() {
    try {
      return await navigator.mediaDevices.enumerateDevices();
    } catch {
      return [];
    }
  }

  deviceId(kind) {
    const t = kind === 'audio' ? this.audioTrack : this.videoTrack;
    return t?.getSettings().deviceId || '';
  }

  /** Camera off stops the camera (its light goes out); on opens it again. */
  async setVideoOn(on) {
    if (on && (!this.videoTrack || this.videoTrack.readyState === 'ended')) {
      await this.acquire('video', this.lastCamera || '');
    } else if (!on && this.videoTrack) {
      this.lastCamera = this.deviceId('video');
      this.videoTrack.stop();
      this.videoTrack = null;
    }
    this.videoOn = on;
  }
}

// ---------------------------------------------------------------- audio levels

/** One AnalyserNode per audible stream, read ten times a second for the speaking ring. */
class Meters {
  constructor(selfAudible) {
    this.selfAudible = selfAudible;
    this.ctx = null;
    this.meters = new Map(); // key -> { source, analyser, track, level, loudUntil }
    this.timer = setInterval(() => this.tick(), 100);
  }

  context() {
    this.ctx ??= new AudioContext();
    return this.ctx;
  }

  watch(key, track) {
    const current = this.meters.get(key);
    if (current?.track === track) return;
    this.unwatch(key);
    if (!track) return;
    const ctx = this.context();
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    source.connect(analyser);
    this.meters.set(key, { source, analyser, track, level: -100, loudUntil: 0, samples: new Float32Array(analyser.fftSize) });
  }

  unwatch(key) {
    const m = this.meters.get(key);
    if (!m) return;
    m.source.disconnect();
    this.meters.delete(key);
  }

  tick() {
    const now = performance.now();
    for (const [key, m] of this.meters) {
      m.analyser.getFloatTimeDomainData(m.samples);
      let sum = 0;
      for (const x of m.samples) sum += x * x;
      m.level = 10 * Math.log10(sum / m.samples.length + 1e-12);
      if (m.level > -50) m.loudUntil = now + 400;
      const speaking = m.loudUntil > now && m.track.enabled && (key !== 'self' || this.selfAudible());
      document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`)?.classList.toggle('speaking', speaking);
    }
  }
}

// ---------------------------------------------------------------- the call

class Call {
  constructor(roomName, params) {
    this.roomName = roomName;
    this.params = params;
    this.media = new LocalMedia();
    this.meters = new Meters(() => this.media.audioOn);
    // Without a click (a link with ?name= joins at once) the audio context may start
    // suspended: the first click anywhere starts it.
    document.addEventListener('pointerdown', () => this.meters.ctx?.resume(), { once: true });
    this.transfers = new Transfers((t) => this.showTransfer(t));
    this.room = null;
    this.tiles = new Map();
    this.soundBlocked = false;
  }

  async start() {
    $('prejoin').hidden = false;
    $('prejoin-title').textContent = this.roomName;
    document.title = `${this.roomName} · Huddle`;
    const nameInput = $('prejoin-name');
    nameInput.value = this.params.get('name') || localStorage.getItem(NAME_KEY) || '';
    await this.media.open();
    if (this.media.problem) setStatus($('prejoin-status'), this.media.problem, 'warn');
    $('preview').srcObject = this.media.videoTrack ? new MediaStream([this.media.videoTrack]) : null;
    $('prejoin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.join(nameInput.value.trim(), $('prejoin-password').value);
    });
    if (this.params.get('name')) this.join(this.params.get('name').trim(), '');
  }

  join(nickname, password) {
    if (!nickname || this.room) return;
    localStorage.setItem(NAME_KEY, nickname);
    setStatus($('prejoin-status'), 'Joining…');
    $('join-button').disabled = true;
    this.room = new Room({
      serverUrl: wsUrl(), room: this.roomName, nickname, password,
      token: this.params.get('token') || undefined, media: this.media, ui: this,
    });
    window.huddle.room = this.room;
    this.room.start();
  }

  // --- what the room reports ---

  status(text, kind) {
    setStatus($('call-status'), text, kind);
  }

  error(code, message, fatal) {
    const refused = REFUSALS.has(code) && this.room?.joined && !this.room.inRoom;
    if (refused) {
      // A rejoin after a long absence was refused: back to the door, with the reason.
      this.room.leave();
      location.replace(roomPath(this.roomName, ''));
      return;
    }
    if (!this.room?.joined) {
      // Still at the door: say why and let the person fix it.
      if (code === 'password_required' || code === 'wrong_password') $('password-row').hidden = false;
      setStatus($('prejoin-status'), message, 'error');
      $('join-button').disabled = false;
      this.room?.leave();
      this.room = null;
      return;
    }
    this.status(message, fatal ? 'error' : 'warn');
  }

  joined({ room, history, rejoin }) {
    this.roomName = room;
    if (rejoin) {
      this.status('Back in the room.');
      return;
    }
    $('prejoin').hidden = true;
    $('call').hidden = false;
    $('preview').srcObject = null;
    $('room-name').textContent = room;
    document.title = `${room} · Huddle`;
    history.forEach((m) => this.chat(m));
    this.selfTile();
    this.controls();
    this.status('');
  }

  peers() {
    const n = this.room ? this.room.peers.size + 1 : 1;
    $('people-count').textContent = `${n} in the call`;
    const to = $('send-to');
    const chosen = to.value;
    to.replaceChildren(el('option', { value: '' }, 'Everyone'));
    for (const p of this.room?.peers.values() ?? []) to.append(el('option', { value: p.id }, p.nickname));
    to.value = [...to.options].some((o) => o.value === chosen) ? chosen : '';
    for (const p of this.room?.peers.values() ?? []) this.peer(p);
  }

  peer(p) {
    if (!this.room?.peers.has(p.id)) return;
    const tile = this.tile(p.id, p.nickname);
    tile.querySelector('.name').textContent = p.nickname;
    const camera = p.camera.getVideoTracks().length > 0 && p.remote.video;
    tile.querySelector('.placeholder').hidden = camera;
    const state = [];
    if (p.state === 'connecting' || p.state === 'waiting') state.push('connecting…');
    if (p.state === 'reconnecting') state.push('reconnecting…');
    if (!p.remote.audio) state.push('muted');
    tile.querySelector('.state').textContent = state.join(' · ');
    this.presentation(p);
  }

  track(p) {
    const tile = this.tile(p.id, p.nickname);
    const video = tile.querySelector('video');
    if (video.srcObject !== p.camera) video.srcObject = p.camera;
    const audio = tile.querySelector('audio');
    const audioTrack = p.camera.getAudioTracks()[0];
    if (audioTrack) {
      if (audio.dataset.track !== audioTrack.id) {
        audio.dataset.track = audioTrack.id;
        audio.srcObject = new MediaStream([audioTrack]);
        this.playAudio(audio);
      }
      this.meters.watch(p.id, audioTrack);
    }
    video.play().catch(() => {});
    if (!this.room.metrics.firstTrackAt) this.room.metrics.firstTrackAt = performance.now();
    video.requestVideoFrameCallback?.(() => {
      this.room.metrics.firstFrameAt ??= performance.now();
    });
    this.peer(p);
  }

  fileChannel(p, channel) {
    this.transfers.attach(p.id, channel);
  }

  /** How wide a peer's camera tile is drawn, in device pixels (null: no tile). */
  tileWidth(id) {
    const video = this.tiles.get(id)?.querySelector('video');
    if (!video || !video.clientWidth) return null;
    return Math.round(video.clientWidth * (window.devicePixelRatio || 1));
  }

  peerGone(p) {
    this.transfers.peerGone(p.id);
    this.meters.unwatch(p.id);
    this.tiles.get(p.id)?.remove();
    this.tiles.delete(p.id);
    this.tiles.get(`${p.id}-screen`)?.remove();
    this.tiles.delete(`${p.id}-screen`);
  }

  chat(m) {
    const log = $('chat-log');
    const time = new Date(m.time_ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    log.append(el('li', { 'data-from': m.from }, el('span', { class: 'who' }, m.nickname), m.text, el('time', {}, time)));
    log.scrollTop = log.scrollHeight;
  }

  // --- tiles ---

  tile(key, name, presentation = false) {
    let tile = this.tiles.get(key);
    if (tile) return tile;
    tile = el('div', { class: 'tile', 'data-key': key },
      el('video', { autoplay: '', playsinline: '', muted: '' }),
      el('audio', { autoplay: '' }),
      el('div', { class: 'placeholder' }, (name || '?').slice(0, 1).toUpperCase()),
      el('span', { class: 'name' }, name),
      el('span', { class: 'state' }));
    tile.querySelector('video').muted = true; // sound plays through the audio element
    this.tiles.set(key, tile);
    (presentation ? $('presentations') : $('grid')).append(tile);
    return tile;
  }

  presentation(p) {
    const key = `${p.id}-screen`;
    const sharing = p.remote.screen && p.screen.getVideoTracks().length > 0;
    if (!sharing) {
      this.tiles.get(key)?.remove();
      this.tiles.delete(key);
      return;
    }
    const tile = this.tile(key, `${p.nickname}'s screen`, true);
    tile.querySelector('.placeholder').hidden = true;
    const video = tile.querySelector('video');
    if (video.srcObject !== p.screen) video.srcObject = p.screen;
  }

  selfTile() {
    const tile = this.tile('self', `${this.room.nickname} (you)`);
    tile.classList.add('self');
    this.refreshSelf();
  }

  refreshSelf() {
    const tile = this.tiles.get('self');
    if (!tile) return;
    const track = this.media.sendingVideo();
    tile.querySelector('video').srcObject = track ? new MediaStream([track]) : null;
    tile.querySelector('.placeholder').hidden = !!track;
    tile.querySelector('.state').textContent = this.media.audioOn ? '' : 'muted';
    this.meters.watch('self', this.media.audioTrack);
  }

  playAudio(audio) {
    audio.play().catch((e) => {
      if (e.name !== 'NotAllowedError') return;
      this.soundBlocked = true;
      $('sound-blocked').hidden = false;
    });
  }

  // --- controls ---

  controls() {
    const mute = $('mute');
    const camera = $('camera');
    const sync = () => {
      mute.textContent = this.media.audioOn ? 'Mute' : 'Unmute';
      mute.setAttribute('aria-pressed', String(!this.media.audioOn));
      mute.disabled = !this.media.audioTrack;
      camera.textContent = this.media.videoOn ? 'Camera off' : 'Camera on';
      camera.setAttribute('aria-pressed', String(!this.media.videoOn));
      this.refreshSelf();
      this.room.tracksChanged();
    };
    mute.addEventListener('click', () => {
      this.media.audioOn = !this.media.audioOn;
      sync();
    });
    camera.addEventListener('click', async () => {
      camera.disabled = true;
      try {
        await this.media.setVideoOn(!this.media.videoOn);
      } catch (e) {
        this.status(`Camera: ${e.message || e.name}`, 'error');
      }
      camera.disabled = false;
      sync();
    });
    sync();
    this.fillDevices();
    navigator.mediaDevices.addEventListener?.('devicechange', () => this.fillDevices());
    for (const [id, kind] of [['camera-select', 'video'], ['mic-select', 'audio']]) {
      $(id).addEventListener('change', async (ev) => {
        try {
          if (kind === 'video' && !this.media.videoOn) this.media.lastCamera = ev.target.value;
          else await this.media.acquire(kind, ev.target.value);
        } catch (e) {
          this.status(`Cannot switch: ${e.message || e.name}`, 'error');
        }
        sync();
      });
    }
    $('speaker-select').addEventListener('change', (ev) => {
      for (const audio of document.querySelectorAll('audio')) audio.setSinkId?.(ev.target.value).catch(() => {});
    });
    $('speaker-row').hidden = !('setSinkId' in HTMLMediaElement.prototype);
    $('enable-sound').addEventListener('click', () => {
      this.meters.context().resume();
      for (const audio of document.querySelectorAll('audio')) audio.play().catch(() => {});
      $('sound-blocked').hidden = true;
    });
    $('leave').addEventListener('click', () => {
      this.room.leave();
      location.href = '/';
    });
    $('copy-link').addEventListener('click', async () => {
      const link = `${location.origin}${roomPath(this.roomName, '')}`;
      try {
        await navigator.clipboard.writeText(link);
        this.status(`Copied ${link}`);
      } catch {
        this.status(link);
      }
    });
    $('chat-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('chat-input');
      const text = input.value.trim();
      if (!text) return;
      this.room.sendChat(text);
      input.value = '';
    });
    $('file-input').addEventListener('change', (ev) => {
      this.sendFiles([...ev.target.files]);
      ev.target.value = '';
    });
    let depth = 0;
    document.addEventListener('dragenter', (ev) => {
      if (!ev.dataTransfer?.types.includes('Files')) return;
      depth++;
      $('drop-hint').hidden = false;
    });
    document.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) $('drop-hint').hidden = true;
    });
    document.addEventListener('dragover', (ev) => ev.preventDefault());
    document.addEventListener('drop', (ev) => {
      ev.preventDefault();
      depth = 0;
      $('drop-hint').hidden = true;
      this.sendFiles([...(ev.dataTransfer?.files ?? [])]);
    });
  }

  async fillDevices() {
    const devices = await this.media.devices();
    const fill = (id, kind, current) => {
      const select = $(id);
      select.replaceChildren();
      for (const d of devices.filter((x) => x.kind === kind)) {
        select.append(el('option', { value: d.deviceId }, d.label || `${kind} ${select.length + 1}`));
      }
      if (current) select.value = current;
    };
    fill('camera-select', 'videoinput', this.media.deviceId('video'));
    fill('mic-select', 'audioinput', this.media.deviceId('audio'));
    fill('speaker-select', 'audiooutput', '');
  }

  sendFiles(files) {
    const to = $('send-to').value;
    const peers = [...this.room.peers.values()].filter((p) => !to || p.id === to);
    if (peers.length === 0) {
      this.status('Nobody else is in the room to send to.', 'warn');
      return;
    }
    for (const file of files) for (const p of peers) this.transfers.send(p.id, file, p.nickname);
  }

  // --- transfers ---

  showTransfer(t) {
    const list = $('transfer-list');
    let row = list.querySelector(`li[data-transfer="${t.id}"]`);
    if (!row) {
      row = el('li', { 'data-transfer': t.id, 'data-direction': t.direction },
        el('div', { class: 'what' }), el('progress', { max: '1', value: '0' }), el('div', { class: 'muted detail' }),
        el('div', { class: 'actions' }));
      list.prepend(row);
    }
    const peer = this.room?.peers.get(t.peer);
    const who = t.peerName || peer?.nickname || 'someone who left';
    row.dataset.state = t.state;
    row.querySelector('.what').textContent = t.direction === 'out'
      ? `${t.name} to ${who}` : `${t.name} from ${who}`;
    row.querySelector('progress').value = t.size ? t.done / t.size : 1;
    const states = {
      offered: t.direction === 'out' ? 'waiting for them to accept' : 'offered to you',
      sending: 'sending', receiving: 'receiving', paused: `paused: ${t.reason}`,
      complete: t.direction === 'out' ? 'delivered, checked' : `saved as ${t.savedAs}, checked`,
      declined: t.reason, cancelled: t.reason, failed: `failed: ${t.reason}`,
    };
    row.querySelector('.detail').textContent = `${formatBytes(t.done)} of ${formatBytes(t.size)} · ${states[t.state]}`;
    const actions = row.querySelector('.actions');
    actions.replaceChildren();
    const button = (label, cls, fn) => actions.append(el('button', { type: 'button', class: cls, onclick: fn }, label));
    if (t.direction === 'in' && t.state === 'offered') {
      button('Accept', 'accept', () => this.transfers.accept(t.id));
      button('Decline', 'decline', () => this.transfers.decline(t.id));
    } else if (['offered', 'sending', 'receiving', 'paused'].includes(t.state)) {
      button('Cancel', 'cancel', () => this.transfers.cancel(t.id));
    } else if (t.state === 'complete' && t.url) {
      button('Save again', 'save', () => save(t.url, t.savedAs));
    }
  }
}

// ---------------------------------------------------------------- start

let path = '';
try {
  path = decodeURIComponent(location.pathname.slice(1));
} catch {
  path = location.pathname.slice(1);
}
if (path === '') {
  lobby();
} else {
  const call = new Call(path, new URLSearchParams(location.search));
  window.huddle = { call, media: call.media, transfers: call.transfers, meters: call.meters };
  call.start().catch((e) => setStatus($('prejoin-status'), String(e), 'error'));
}
