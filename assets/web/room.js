// Signaling and the mesh: one WebSocket to the Huddle server, one RTCPeerConnection per other
// participant, following the rules Huddle's native client follows (docs/protocol.md): the
// newcomer offers, `session` numbers name connections, perfect negotiation on glare (the peer
// whose id sorts later is polite), trickle ICE, `media_state`, `bye`, and rebuilding a failed
// connection from the side whose id sorts first.

import { CHANNEL_LABEL } from './files.js';

const PROTOCOL_VERSION = 1;
const SCREEN_STREAM = 'huddle-screen';
// How long a peer the room stopped listing (after our reconnect) keeps its place.
const MISSING_PEER_GRACE_MS = 20000;
const RETRYABLE = new Set(['shutting_down', 'unavailable', 'slow_reader', 'rate_limited', 'hello_timeout']);

/** The stream ids of an SDP's media sections that carry a screen share, by mid. */
function screenMids(sdp) {
  const mids = new Set();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /\r?\na=mid:(\S+)/.exec(section);
    if (mid && new RegExp(`\\r?\\na=msid:${SCREEN_STREAM} `).test(section)) mids.add(mid[1]);
  }
  return mids;
}

function randomSession() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/**
 * The room as this page takes part in it. `ui` receives what happened:
 * status(text, kind), joined(info), error(code, message, fatal), chat(message), peers(),
 * peer(peer), track(peer), fileChannel(peer, channel), peerGone(peer).
 */
export class Room {
  constructor({ serverUrl, room, nickname, password, token, media, ui }) {
    Object.assign(this, { serverUrl, room, nickname, password, token, media, ui });
    this.ws = null;
    this.myId = null;
    this.iceServers = [];
    this.peers = new Map();
    this.rejoinToken = null;
    this.sfu = null; // the SFU link, while the room is on the SFU
    this.joined = false; // has been in the room
    this.inRoom = false; // is in it now (not reconnecting)
    this.leaving = false;
    this.reconnects = 0;
    this.metrics = { joinStartedAt: performance.now() };
  }

  // --- signaling ---

  start() {
    this.connect(null);
  }

  connect(resume) {
    const ws = new WebSocket(this.serverUrl);
    this.ws = ws;
    ws.onopen = () => {
      const hello = { type: 'hello', version: PROTOCOL_VERSION, client: `huddle-web ${navigator.userAgent.split(' ').pop()}` };
      if (resume) hello.resume = resume;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (this.ws !== ws) return; // left, or replaced by a reconnect
      this.onServer(msg).catch((e) => console.warn('handling', msg.type, e));
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.leaving) return;
      this.ws = null;
      this.inRoom = false;
      if (!this.joined) {
        this.ui.error('closed', 'The server closed the connection.', true);
        return;
      }
      // Back into the room with the rejoin token; peer connections may survive.
      const delay = Math.min(10000, 500 * 2 ** this.reconnects++);
      this.ui.status(`Connection to the server lost; trying again in ${Math.round(delay / 1000)} s…`, 'warn');
      setTimeout(() => this.leaving || this.connect(this.rejoinToken), delay);
    };
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  relay(to, session, signal) {
    this.send({ type: 'relay', to, payload: { session, ...signal } });
  }

  async onServer(msg) {
    switch (msg.type) {
      case 'welcome': {
        const sameId = this.myId === msg.peer_id;
        if (this.myId && !sameId) {
          // A new identity: every connection has to start over.
          for (const peer of this.peers.values()) this.dropPeer(peer.id, 'reconnected');
        }
        this.myId = msg.peer_id;
        this.iceServers = (msg.ice_servers || []).map((s) => ({ urls: s.urls, username: s.username, credential: s.credential }));
        // The rejoin token gets back in without the password or join token for 5 minutes;
        // after that the server applies the ordinary checks, so those go along too.
        const join = { type: 'join', room: this.room, nickname: this.nickname };
        if (this.rejoinToken) join.rejoin_token = this.rejoinToken;
        if (this.password) join.password = this.password;
        if (this.token) join.token = this.token;
        this.send(join);
        break;
      }
      case 'joined': {
        const rejoin = this.joined;
        this.joined = true;
        this.inRoom = true;
        this.reconnects = 0;
        this.room = msg.room;
        this.nickname = msg.you.nickname;
        this.rejoinToken = msg.rejoin_token || null;
        this.metrics.joinedAt = performance.now();
        // The server ended our SFU membership with the old connection; if the room is still on
        // the SFU (msg.sfu), a new link is made below. On the SFU nobody connects to anybody.
        const onSfu = !!msg.sfu;
        if (this.sfu) {
          this.sfu.close();
          this.sfu = null;
        }
        const listed = new Set(msg.peers.map((p) => p.id));
        // A peer the room does not list may be reconnecting too (a server restart): it keeps
        // its place and connection for a while, as in the native client.
        for (const peer of this.peers.values()) {
          if (!listed.has(peer.id)) peer.markMissing();
        }
        for (const p of msg.peers) {
          const known = this.peers.get(p.id);
          if (known) {
            known.nickname = p.nickname;
            known.found();
            // It may have seen us leave and forgotten us: a connection that is not up starts
            // over, from us.
            if (known.state !== 'connected' && !onSfu) {
              known.close(false);
              known.newSession(true);
            }
            continue;
          }
          // The newcomer offers to everyone already there (in a mesh).
          const peer = this.addPeer(p.id, p.nickname);
          if (!onSfu) peer.newSession(true);
        }
        if (onSfu) this.enterSfu();
        this.ui.joined({ room: msg.room, you: msg.you, history: msg.history || [], rejoin, capacity: msg.capacity });
        this.ui.peers();
        break;
      }
      case 'rejoin_token':
        this.rejoinToken = msg.token;
        break;
      case 'peer_joined': {
        const known = this.peers.get(msg.peer.id);
        if (known) {
          // Back under the id we know (after its reconnect): keep what works.
          known.found();
          known.nickname = msg.peer.nickname;
        } else this.addPeer(msg.peer.id, msg.peer.nickname);
        if (this.sfu) this.peers.get(msg.peer.id).sendMediaState();
        this.ui.peers();
        break;
      }
      case 'peer_left':
        this.dropPeer(msg.peer_id, msg.reason);
        break;
      case 'nickname_changed': {
        if (msg.peer_id === this.myId) this.nickname = msg.nickname;
        const peer = this.peers.get(msg.peer_id);
        if (peer) peer.nickname = msg.nickname;
        this.ui.peers();
        break;
      }
      case 'chat':
        this.ui.chat(msg.message);
        break;
      case 'relay': {
        const peer = this.peers.get(msg.from);
        const payload = msg.payload;
        if (!peer || !payload || typeof payload !== 'object' || !Number.isInteger(payload.session)) break;
        if (this.sfu) {
          // In a room on the SFU only media states travel between peers.
          if (payload.kind === 'media_state') {
            peer.remote = { audio: !!payload.audio, video: !!payload.video, screen: !!payload.screen };
            this.ui.peer(peer);
          }
          break;
        }
        await peer.onSignal(payload);
        break;
      }
      case 'room_mode':
        if (msg.sfu && !this.sfu) this.enterSfu();
        else if (!msg.sfu && this.sfu) this.leaveSfu();
        break;
      case 'sfu_moved':
        if (this.sfu) this.restartSfu();
        break;
      case 'sfu_published':
        await this.sfu?.published(msg.sdp);
        break;
      case 'sfu_offer':
        await this.sfu?.offered(msg.sdp, Array.isArray(msg.streams) ? msg.streams : []);
        break;
      case 'error':
        // Fatal errors a reconnect can cure (the server restarting, a hiccup) are retried.
        if (msg.fatal && !RETRYABLE.has(msg.code)) this.leaving = true;
        this.ui.error(msg.code, msg.message, msg.fatal);
        break;
      case 'left':
        break;
    }
  }

  /** The room moved onto the SFU: the mesh connections give way to one publishing and one
   * subscribing connection with the server's SFU. */
  enterSfu() {
    for (const peer of this.peers.values()) peer.close(false);
    this.sfu = new SfuLink(this);
    this.sfu.publish().catch((e) => this.ui.status(`Cannot publish to the SFU: ${e.message || e}`, 'error'));
    for (const peer of this.peers.values()) peer.sendMediaState();
    this.ui.peers();
  }

  /** A connection with the SFU failed (the path stopped carrying media): after a wait that
   * doubles with each failure in a row, the server is asked to start our membership over, and
   * answers sfu_moved. */
  sfuFailed() {
    if (this.sfuRestartTimer) return;
    const failures = this.sfuFailures || 0;
    this.sfuFailures = failures + 1;
    const wait = Math.min(30000, 1000 * 2 ** Math.min(failures, 5));
    this.sfuRestartTimer = setTimeout(() => {
      this.sfuRestartTimer = null;
      if (this.sfu) this.send({ type: 'sfu_restart' });
    }, wait);
  }

  /** The room's media moved to another SFU (the one it was on was lost), or our membership
   * started over: both SFU connections start over. */
  restartSfu() {
    this.sfu.close();
    this.sfu = new SfuLink(this);
    this.sfu.publish().catch((e) => this.ui.status(`Cannot publish to the SFU: ${e.message || e}`, 'error'));
    this.ui.peers();
  }

  /** The room shrank back to a mesh: each pair connects again, offered by the side whose id
   * sorts first (as after a failure). */
  leaveSfu() {
    this.sfu.close();
    this.sfu = null;
    for (const peer of this.peers.values()) {
      if (this.myId < peer.id) peer.newSession(true);
    }
    this.ui.peers();
  }

  addPeer(id, nickname) {
    const peer = new Peer(this, id, nickname);
    this.peers.set(id, peer);
    return peer;
  }

  dropPeer(id, reason) {
    const peer = this.peers.get(id);
    if (!peer) return;
    peer.found();
    peer.close(false);
    this.peers.delete(id);
    this.ui.peerGone(peer, reason);
    this.ui.peers();
  }

  sendChat(text) {
    this.send({ type: 'chat', text });
  }

  /** The local tracks changed (device switched, mute, camera off): every connection follows. */
  tracksChanged() {
    this.sfu?.attachTracks();
    for (const peer of this.peers.values()) peer.attachTracks();
    for (const peer of this.peers.values()) peer.sendMediaState();
  }

  leave() {
    this.leaving = true;
    this.sfu?.close();
    this.sfu = null;
    for (const id of [...this.peers.keys()]) {
      const peer = this.peers.get(id);
      peer.close(false);
      this.peers.delete(id);
    }
    if (this.joined) this.send({ type: 'leave' });
    const ws = this.ws;
    this.ws = null;
    if (ws) setTimeout(() => ws.close(), 100);
  }
}

/** One other participant and our current connection (session) with them. */
class Peer {
  constructor(room, id, nickname) {
    this.room = room;
    this.id = id;
    this.nickname = nickname;
    this.polite = room.myId > id;
    this.session = null;
    this.pc = null;
    this.closedSessions = new Set();
    this.failures = 0;
    this.rebuildTimer = null;
    this.state = 'waiting';
    this.remote = { audio: true, video: true, screen: false };
    this.camera = new MediaStream();
    this.screen = new MediaStream();
    this.channel = null;
    this.connectedAt = null;
  }

  markMissing() {
    if (this.missingTimer) return;
    this.missingTimer = setTimeout(() => {
      if (this.room.peers.get(this.id) === this) this.room.dropPeer(this.id, 'gone');
    }, MISSING_PEER_GRACE_MS);
  }

  found() {
    clearTimeout(this.missingTimer);
    this.missingTimer = null;
  }

  /** Starts a new connection; the initiator offers (with the file channel), the other answers. */
  newSession(initiator, session = randomSession()) {
    if (this.room.sfu) return; // media goes through the SFU
    if (this.session != null) this.closedSessions.add(this.session);
    this.closePc();
    this.session = session;
    this.initiator = initiator;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.pendingCandidates = [];
    this.screenMids = new Set();
    this.disconnectedTimer = null;
    this.state = 'connecting';
    const pc = new RTCPeerConnection({ iceServers: this.room.iceServers });
    this.pc = pc;
    this.camera = new MediaStream();
    this.screen = new MediaStream();
    const live = () => this.pc === pc;
    pc.onicecandidate = ({ candidate }) => {
      if (!live() || !candidate || !candidate.candidate) return;
      const c = { kind: 'candidate', candidate: candidate.candidate };
      if (candidate.sdpMid != null) c.sdp_mid = candidate.sdpMid;
      if (candidate.sdpMLineIndex != null) c.sdp_mline_index = candidate.sdpMLineIndex;
      if (candidate.usernameFragment) c.username_fragment = candidate.usernameFragment;
      this.room.relay(this.id, session, c);
    };
    pc.ontrack = (ev) => live() && this.onTrack(ev);
    pc.ondatachannel = (ev) => live() && ev.channel.label === CHANNEL_LABEL && this.useChannel(ev.channel);
    pc.onconnectionstatechange = () => live() && this.onConnectionState();
    pc.oniceconnectionstatechange = () => live() && this.onIceState();
    pc.onnegotiationneeded = () => live() && this.offer();
    if (initiator) {
      // The same order as the native client: camera, microphone, screen.
      this.cameraTx = pc.addTransceiver('video', { direction: 'sendrecv' });
      this.audioTx = pc.addTransceiver('audio', { direction: 'sendrecv' });
      this.screenTx = pc.addTransceiver('video', { direction: 'recvonly' });
      this.attachTracks();
      this.useChannel(pc.createDataChannel(CHANNEL_LABEL, { ordered: true }));
    } else {
      this.cameraTx = this.audioTx = this.screenTx = null;
    }
    this.room.ui.peer(this);
  }

  /** Puts our current microphone and camera tracks (or nothing) on this connection. */
  attachTracks() {
    const media = this.room.media;
    this.cameraTx?.sender.replaceTrack(media.sendingVideo()).catch((e) => console.warn(e));
    this.audioTx?.sender.replaceTrack(media.sendingAudio()).catch((e) => console.warn(e));
  }

  sendMediaState() {
    const m = this.room.media;
    const state = { kind: 'media_state', audio: m.audioOn, video: m.videoOn, screen: false };
    // In a room on the SFU there is no connection to name: session 0.
    if (this.room.sfu) this.room.relay(this.id, 0, state);
    else if (this.session && this.state === 'connected') this.room.relay(this.id, this.session, state);
  }

  async offer() {
    const { pc, session } = this;
    try {
      this.makingOffer = true;
      await pc.setLocalDescription();
      if (this.pc !== pc) return; // replaced meanwhile
      this.room.relay(this.id, session, { kind: 'offer', sdp: pc.localDescription.sdp });
    } catch (e) {
      if (this.pc === pc) console.warn('offer failed', e);
    } finally {
      if (this.pc === pc) this.makingOffer = false;
    }
  }

  async onSignal(payload) {
    if (this.room.sfu) return; // no peer-to-peer media in a room on the SFU
    const { session, kind } = payload;
    if (session !== this.session) {
      if (kind === 'bye' && this.session == null) {
        // It closed a connection we no longer have (we lost ours first): one side must
        // start anew, as after any bye.
        this.scheduleRebuild();
        return;
      }
      if (kind !== 'offer') return; // stale
      if (this.closedSessions.has(session)) {
        this.room.relay(this.id, session, { kind: 'bye' });
        return;
      }
      // The other side started a fresh connection: answer it, dropping ours.
      this.newSession(false, session);
    }
    const pc = this.pc;
    switch (kind) {
      case 'offer':
      case 'answer': {
        if (typeof payload.sdp !== 'string') return;
        const offer = kind === 'offer';
        const collision = offer && (this.makingOffer || pc.signalingState !== 'stable');
        this.ignoreOffer = !this.polite && collision;
        if (this.ignoreOffer) return;
        if (!offer && pc.signalingState !== 'have-local-offer') return; // a stale answer
        if (offer) for (const mid of screenMids(payload.sdp)) this.screenMids.add(mid);
        const pending = this.pendingCandidates;
        await pc.setRemoteDescription({ type: kind, sdp: payload.sdp });
        // Every await may have seen the session replaced (a bye, a newer offer): then this
        // one's work is over.
        if (this.pc !== pc) return;
        for (const c of pending.splice(0)) await this.addCandidate(pc, c);
        if (offer && this.pc === pc) {
          if (!this.cameraTx) this.takeTransceivers();
          await pc.setLocalDescription();
          if (this.pc !== pc) return;
          this.room.relay(this.id, session, { kind: 'answer', sdp: pc.localDescription.sdp });
        }
        break;
      }
      case 'candidate':
        if (typeof payload.candidate !== 'string') return;
        if (!pc.remoteDescription) this.pendingCandidates.push(payload);
        else await this.addCandidate(pc, payload);
        break;
      case 'media_state':
        this.remote = { audio: !!payload.audio, video: !!payload.video, screen: !!payload.screen };
        this.room.ui.peer(this);
        break;
      case 'bye':
        // The other side closed this connection; the side whose id sorts first starts a new one.
        this.failures++;
        this.close(false);
        this.scheduleRebuild();
        break;
    }
  }

  /** Answering: our tracks go on the transceivers the offer made, matched as the native does. */
  takeTransceivers() {
    const ts = this.pc.getTransceivers();
    const videos = ts.filter((t) => t.receiver.track.kind === 'video');
    this.screenTx = videos.find((t) => this.screenMids.has(t.mid)) || videos[1] || null;
    this.cameraTx = videos.find((t) => t !== this.screenTx) || null;
    this.audioTx = ts.find((t) => t.receiver.track.kind === 'audio') || null;
    if (this.cameraTx) this.cameraTx.direction = 'sendrecv';
    if (this.audioTx) this.audioTx.direction = 'sendrecv';
    if (this.screenTx) this.screenTx.direction = 'recvonly';
    this.attachTracks();
  }

  async addCandidate(pc, c) {
    try {
      // An empty mid means "no mid": find the section by index instead.
      const sdpMid = c.sdp_mid ? c.sdp_mid : null;
      const sdpMLineIndex = c.sdp_mline_index ?? (sdpMid == null ? 0 : null);
      await pc.addIceCandidate({ candidate: c.candidate, sdpMid, sdpMLineIndex, usernameFragment: c.username_fragment });
    } catch (e) {
      if (!this.ignoreOffer && this.pc === pc) console.warn('candidate refused', e);
    }
  }

  onTrack(ev) {
    const t = ev.transceiver;
    const isScreen = t === this.screenTx || this.screenMids.has(t.mid) || ev.streams.some((s) => s.id === SCREEN_STREAM);
    const stream = isScreen ? this.screen : this.camera;
    stream.addTrack(ev.track);
    this.room.ui.track(this);
  }

  useChannel(channel) {
    this.channel = channel;
    const opened = () => this.room.ui.fileChannel(this, channel);
    if (channel.readyState === 'open') opened();
    else channel.addEventListener('open', opened, { once: true });
  }

  onConnectionState() {
    const s = this.pc.connectionState;
    if (s === 'connected') {
      if (this.state !== 'connected') {
        this.state = 'connected';
        this.failures = 0;
        this.connectedAt = this.connectedAt ?? performance.now();
        this.room.metrics.firstConnectedAt ??= performance.now();
        this.sendMediaState();
        this.room.ui.peer(this);
      }
    } else if (s === 'failed') {
      this.failures++;
      this.close(true);
      this.scheduleRebuild();
    }
  }

  onIceState() {
    const s = this.pc.iceConnectionState;
    if (s === 'disconnected') {
      this.state = 'reconnecting';
      this.room.ui.peer(this);
      // A path down for 2 s gets one ICE restart, from the side that offered first.
      clearTimeout(this.disconnectedTimer);
      this.disconnectedTimer = setTimeout(() => {
        if (this.pc && this.initiator && this.pc.iceConnectionState === 'disconnected') this.pc.restartIce();
      }, 2000);
    } else if (s === 'connected' || s === 'completed') {
      clearTimeout(this.disconnectedTimer);
      if (this.state === 'reconnecting') {
        this.state = 'connected';
        this.room.ui.peer(this);
      }
    }
  }

  scheduleRebuild() {
    if (!this.room.peers.has(this.id) || this.room.myId >= this.id) return;
    clearTimeout(this.rebuildTimer);
    const backoff = Math.min(10000, 250 * 2 ** Math.min(6, Math.max(0, this.failures - 1)));
    this.rebuildTimer = setTimeout(() => {
      if (this.room.peers.get(this.id) === this && !this.pc) this.newSession(true);
    }, backoff);
  }

  closePc() {
    if (!this.pc) return;
    clearTimeout(this.disconnectedTimer);
    this.pc.close();
    this.pc = null;
    this.channel = null;
    for (const s of [this.camera, this.screen]) for (const t of s.getTracks()) s.removeTrack(t);
  }

  /** Ends the current connection; `bye` tells the other side unless it is the one leaving. */
  close(sayBye) {
    if (this.session != null) {
      this.closedSessions.add(this.session);
      if (sayBye) this.room.relay(this.id, this.session, { kind: 'bye' });
    }
    this.closePc();
    this.session = null;
    this.state = 'waiting';
    clearTimeout(this.rebuildTimer);
    this.room.ui.peer(this);
  }
}

/** Resolves once `pc` has gathered its candidates (the SFU exchange carries complete SDPs). */
function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    const check = () => pc.iceGatheringState === 'complete' && resolve();
    pc.addEventListener('icegatheringstatechange', check);
    setTimeout(resolve, 3000); // whatever was found by then
  });
}

/** Our two connections with the SFU: one publishes our camera and microphone, one receives
 * everyone else's, its media sections named by the server's `streams`. */
class SfuLink {
  constructor(room) {
    this.room = room;
    this.pub = null;
    this.sub = null;
    this.mids = new Map(); // mid -> { peer_id, kind }
    this.layers = new Map(); // peer id -> the simulcast layer last asked for
    this.tooBig = new Map(); // peer id -> seconds its picture has been bigger than asked
    // Each peer's layer follows its tile's size (checked every second: tiles change with the
    // window and the number of people).
    this.layerTimer = setInterval(() => this.askLayers(), 1000);
  }

  async publish() {
    const pc = new RTCPeerConnection({ iceServers: this.room.iceServers });
    this.pub = pc;
    pc.onconnectionstatechange = () => {
      if (this.pub !== pc) return;
      if (pc.connectionState === 'failed') this.room.sfuFailed();
      else if (pc.connectionState === 'connected') this.room.sfuFailures = 0;
    };
    // Simulcast as the native client sends it: the whole picture, a half and a quarter at
    // 15 fps, highest first (the order the SFU reads), each receiver getting the one its tile
    // needs.
    this.cameraTx = pc.addTransceiver('video', {
      direction: 'sendonly',
      sendEncodings: [
        { rid: 'h', maxBitrate: 900000 },
        { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 300000 },
        { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 60000, maxFramerate: 15 },
      ],
    });
    this.audioTx = pc.addTransceiver('audio', { direction: 'sendonly' });
    this.attachTracks();
    await pc.setLocalDescription();
    await gathered(pc);
    if (this.pub !== pc) return;
    this.room.send({ type: 'sfu_publish', sdp: pc.localDescription.sdp });
  }

  attachTracks() {
    const media = this.room.media;
    this.cameraTx?.sender.replaceTrack(media.sendingVideo()).catch((e) => console.warn(e));
    this.audioTx?.sender.replaceTrack(media.sendingAudio()).catch((e) => console.warn(e));
  }

  async published(sdp) {
    if (typeof sdp === 'string' && this.pub?.signalingState === 'have-local-offer') {
      await this.pub.setRemoteDescription({ type: 'answer', sdp });
    }
  }

  async offered(sdp, streams) {
    if (typeof sdp !== 'string') return;
    if (!this.sub) {
      const pc = new RTCPeerConnection({ iceServers: this.room.iceServers });
      this.sub = pc;
      pc.ontrack = (ev) => this.sub === pc && this.onTrack(ev);
      pc.onconnectionstatechange = () => {
        if (this.sub !== pc) return;
        if (pc.connectionState === 'failed') this.room.sfuFailed();
        const state = pc.connectionState === 'connected' ? 'connected' : 'connecting';
        for (const peer of this.room.peers.values()) {
          peer.state = state;
          this.room.ui.peer(peer);
        }
        if (state === 'connected') this.room.metrics.firstConnectedAt ??= performance.now();
      };
    }
    const pc = this.sub;
    for (const s of streams) this.mids.set(String(s.mid), s);
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription();
    await gathered(pc);
    if (this.sub !== pc) return;
    this.room.send({ type: 'sfu_answer', sdp: pc.localDescription.sdp });
  }

  onTrack(ev) {
    const stream = this.mids.get(ev.transceiver.mid);
    const peer = stream && this.room.peers.get(stream.peer_id);
    if (!peer) return;
    // A screen share goes where the mesh puts one: the peer's presentation.
    const target = stream.kind === 'screen' ? peer.screen : peer.camera;
    for (const old of target.getTracks().filter((t) => t.kind === ev.track.kind)) {
      target.removeTrack(old);
    }
    target.addTrack(ev.track);
    this.room.ui.track(peer);
  }

  /** The layer of each peer's camera its tile needs: the smallest at least about as wide
   * (160, 320 or 640 device pixels for a 640x480 camera, a quarter more allowed). */
  askLayers() {
    for (const s of this.mids.values()) {
      if (s.kind !== 'video') continue;
      const width = this.room.ui.tileWidth?.(s.peer_id);
      if (width == null) continue;
      const layer = width <= 200 ? 0 : width <= 400 ? 1 : 2;
      if (this.layers.get(s.peer_id) === layer) continue;
      this.layers.set(s.peer_id, layer);
      this.tooBig.delete(s.peer_id);
      this.room.send({ type: 'sfu_layer', peer_id: s.peer_id, layer });
    }
    this.checkLayers().catch(() => {});
  }

  /** The SFU moves to a smaller layer at that layer's next keyframe. One requested before the
   * connection was up can be missed, and a camera sends no other keyframe unasked: a picture
   * still bigger than asked for three seconds running asks the publisher for one. */
  async checkLayers() {
    if (!this.sub) return;
    const most = [320, 320, 640]; // layer 0 may come as the half: the quarter is optional
    for (const peer of this.room.peers.values()) {
      const layer = this.layers.get(peer.id);
      const track = peer.camera.getVideoTracks()[0];
      if (layer == null || !track || !this.sub) continue;
      let width = 0;
      (await this.sub.getStats(track)).forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video') width = r.frameWidth || 0;
      });
      const late = width > most[layer] ? (this.tooBig.get(peer.id) || 0) + 1 : 0;
      this.tooBig.set(peer.id, late);
      if (late >= 3) {
        this.tooBig.set(peer.id, 0);
        this.room.send({ type: 'sfu_keyframe', peer_id: peer.id });
      }
    }
  }

  close() {
    clearInterval(this.layerTimer);
    this.pub?.close();
    this.sub?.close();
    this.pub = this.sub = null;
  }
}
