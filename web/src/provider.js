// A Yjs provider speaking the stock y-websocket wire protocol (y-protocols sync + awareness),
// written so that the transport is replaceable: anything with connect()/send()/close() and the
// callbacks below carries the same messages: the WebSocket here, the HTTP fallback in poll.js
// (which also asks the provider for its state vector on every poll, and reports each answer as
// a sign of life, since an idle poll carries no message).
//
// It differs from the stock WebsocketProvider in what the page needs around it: exponential
// backoff with full jitter capped near 10 s, an immediate retry on `online` and when the tab
// becomes visible, a status with the time of the next attempt, and a hook that lets the
// confirmation tracker see every sync message the server sends.

import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as authProtocol from 'y-protocols/auth'

export const MESSAGE_SYNC = 0
export const MESSAGE_AWARENESS = 1
export const MESSAGE_AUTH = 2
export const MESSAGE_QUERY_AWARENESS = 3

const BACKOFF_BASE_MS = 500
const BACKOFF_CAP_MS = 10000
const OPEN_TIMEOUT_MS = 10000
// The server sends something at least every 15 s (awareness keepalive); silence longer than
// this means the connection is dead even if the socket has not noticed.
const SILENCE_TIMEOUT_MS = 35000

/** Close codes after which connecting again cannot succeed (docs/protocol.md): the document was
 * deleted (4410), or the link's access ended or never was (4401 no or expired token, 4403 not
 * for this document). The page says so instead of reconnecting. */
export const FINAL_CLOSE_CODES = Object.freeze([4401, 4403, 4410])
export const isFinalClose = (code) => FINAL_CLOSE_CODES.includes(code)

/** Delay before reconnect attempt number `attempt` (0-based): full jitter on a capped exponential. */
export const backoffDelay = (attempt, random = Math.random) => {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt)
  return Math.round(ceiling / 2 + random() * ceiling / 2)
}

/** The browser WebSocket as a transport. */
export class WebSocketTransport {
  /** @param {string} url */
  constructor (url) {
    this.kind = 'websocket'
    this.url = url
    this.ws = null
  }

  /** @param {{onOpen: Function, onMessage: Function, onClose: Function, onError: Function}} handlers */
  connect (handlers) {
    const ws = new WebSocket(this.url)
    ws.binaryType = 'arraybuffer'
    this.ws = ws
    ws.onopen = () => handlers.onOpen()
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') handlers.onMessage(new Uint8Array(event.data))
    }
    ws.onclose = (event) => {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null
      handlers.onClose({ code: event.code, reason: event.reason })
    }
    ws.onerror = () => handlers.onError()
  }

  /** @param {Uint8Array} data */
  send (data) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(data)
      return true
    }
    return false
  }

  close () {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close()
  }
}

/**
 * Events (via on(name, fn)):
 *  - 'status'  {state: 'connecting'|'connected'|'waiting'|'offline', retryAt?: number,
 *               transport: 'websocket'|'poll' (the kind of the connection in use or being made)}
 *  - 'synced'  the first handshake on this connection finished (server's step 2 applied)
 *  - 'server-sync' {kind: 'step1'|'step2'|'update', payload: Uint8Array} every sync message in
 *  - 'sent'    {kind: 'step2'|'update', payload: Uint8Array} every sync message out
 *  - 'denied'  {reason}
 *  - 'ended'   {code, reason} closed for good (isFinalClose): it does not reconnect
 */
export class SyncProvider {
  /**
   * @param {Y.Doc} doc
   * @param {awarenessProtocol.Awareness} awareness
   * @param {(room: string) => any} makeTransport
   * @param {string} room
   */
  constructor (doc, awareness, makeTransport, room) {
    this.doc = doc
    this.awareness = awareness
    this.makeTransport = makeTransport
    this.room = room
    this.transport = null
    this.connected = false
    this.synced = false
    this.attempt = 0
    this.retryTimer = null
    this.openTimer = null
    this.silenceTimer = null
    this.state = 'idle'
    this.lastKind = null
    this.hiddenState = null
    this.retryAt = 0
    this.shouldConnect = false
    this.ended = null
    this.listeners = new Map()

    this._onDocUpdate = (update, origin) => {
      if (origin !== this) this._sendSync(syncProtocol.messageYjsUpdate, update)
    }
    this._onAwarenessUpdate = ({ added, updated, removed }) => {
      const changed = added.concat(updated, removed)
      this._send(encodeAwareness(this.awareness, changed))
    }
    this.retryNow = () => {
      if (this.shouldConnect && !this.transport) this._connect()
    }
    this._onVisible = () => {
      if (document.visibilityState === 'visible') this.retryNow()
    }
    this._onOffline = () => {
      // A socket that still looks open when the network is gone is dead or about to be: drop it
      // now, so the page says "offline" at once rather than "connected" until the silence timeout.
      if (this.transport) this._drop(this.transport, 'the browser went offline')
      else this._setStatus(this.state)
    }
    doc.on('update', this._onDocUpdate)
    awareness.on('update', this._onAwarenessUpdate)
    this._onPageHide = () => {
      // The page goes: the others should see us leave now, not after a timeout. Without a
      // connection of its own, the transport needs to be told (the fallback sends a beacon).
      this.hiddenState = this.awareness.getLocalState()
      if (this.hiddenState !== null) {
        awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], 'page hidden')
      }
      if (this.transport && this.transport.goodbye) this.transport.goodbye()
    }
    this._onPageShow = (event) => {
      // Back from the back/forward cache: be seen again.
      if (event.persisted && this.hiddenState && this.awareness.getLocalState() === null) {
        this.awareness.setLocalState(this.hiddenState)
      }
    }
    window.addEventListener('online', this.retryNow)
    window.addEventListener('offline', this._onOffline)
    window.addEventListener('pagehide', this._onPageHide)
    window.addEventListener('pageshow', this._onPageShow)
    document.addEventListener('visibilitychange', this._onVisible)
  }

  on (name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set())
    this.listeners.get(name).add(fn)
  }

  emit (name, arg) {
    for (const fn of this.listeners.get(name) || []) fn(arg)
  }

  connect () {
    this.shouldConnect = true
    if (!this.transport) this._connect()
  }

  disconnect () {
    this.shouldConnect = false
    clearTimeout(this.retryTimer)
    if (this.transport) this.transport.close()
  }

  destroy () {
    this.disconnect()
    this.doc.off('update', this._onDocUpdate)
    this.awareness.off('update', this._onAwarenessUpdate)
    window.removeEventListener('online', this.retryNow)
    window.removeEventListener('offline', this._onOffline)
    window.removeEventListener('pagehide', this._onPageHide)
    window.removeEventListener('pageshow', this._onPageShow)
    document.removeEventListener('visibilitychange', this._onVisible)
  }

  /** What the page should show: 'offline' wins over everything but a live connection. */
  get status () {
    const transport = this.transport ? this.transport.kind : this.lastKind
    if (this.connected) return { state: 'connected', transport }
    if (this.ended) return { state: 'ended', transport, ...this.ended }
    if (typeof navigator !== 'undefined' && navigator.onLine === false) return { state: 'offline', transport }
    return { state: this.state, retryAt: this.retryAt, transport }
  }

  /** Leave the connection in use for a new one at once (the transport policy found a better
   * way through): the new one syncs both ways, so nothing is lost or doubled. */
  reconnect () {
    const transport = this.transport
    if (!transport) return this.retryNow()
    transport.close()
    this._onClose(transport, { code: 1000, reason: 'changing transport', now: true })
  }

  _setStatus (state) {
    this.state = state
    this.emit('status', this.status)
  }

  _connect () {
    clearTimeout(this.retryTimer)
    this.retryTimer = null
    const transport = this.makeTransport(this.room)
    this.transport = transport
    this.lastKind = transport.kind
    this._setStatus('connecting')
    this.openTimer = setTimeout(() => this._drop(transport, 'no answer from the server'), OPEN_TIMEOUT_MS)
    transport.connect({
      onOpen: () => this._onOpen(transport),
      onMessage: (data) => this._onMessage(transport, data),
      onClose: (info) => this._onClose(transport, info),
      onError: () => {},
      stateVector: () => Y.encodeStateVector(this.doc),
      onAlive: () => { if (transport === this.transport) this._touch() }
    })
  }

  _onOpen (transport) {
    if (transport !== this.transport) return
    clearTimeout(this.openTimer)
    this.connected = true
    this.synced = false
    this._touch()
    this._setStatus('connected')
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_SYNC)
    syncProtocol.writeSyncStep1(encoder, this.doc)
    this._send(encoding.toUint8Array(encoder))
    if (this.awareness.getLocalState() !== null) {
      // Re-announce with a new clock: the others saw our presence removed at the old one,
      // and a state at an equal clock does not override a removal.
      this.awareness.setLocalState(this.awareness.getLocalState())
    }
    this.emit('open')
  }

  _onClose (transport, info) {
    if (transport !== this.transport) return
    clearTimeout(this.openTimer)
    clearTimeout(this.silenceTimer)
    this.transport = null
    const wasConnected = this.connected
    this.connected = false
    this.synced = false
    const others = Array.from(this.awareness.getStates().keys()).filter(id => id !== this.doc.clientID)
    awarenessProtocol.removeAwarenessStates(this.awareness, others, this)
    this.emit('close', info)
    if (this.shouldConnect && isFinalClose(info.code)) {
      this.shouldConnect = false
      this.ended = { code: info.code, reason: info.reason || '' }
      this._setStatus('ended')
      this.emit('ended', this.ended)
      return
    }
    if (!this.shouldConnect) {
      this._setStatus('idle')
      return
    }
    // 1012 = the server is restarting: another instance is likely ready, try at once-ish.
    const delay = info.now ? 0 : info.code === 1012 ? Math.round(backoffDelay(0) / 2) : backoffDelay(this.attempt)
    this.attempt += 1
    this.retryAt = Date.now() + delay
    this.retryTimer = setTimeout(() => this._connect(), delay)
    this._setStatus('waiting')
  }

  /** Give up on `transport` now: a dead connection's close handshake can take minutes to end,
   * and its late close event is ignored since it is no longer the current transport. */
  _drop (transport, reason) {
    transport.close()
    this._onClose(transport, { code: 1006, reason })
  }

  _touch () {
    clearTimeout(this.silenceTimer)
    const transport = this.transport
    this.silenceTimer = setTimeout(() => transport && this._drop(transport, 'the server went silent'), SILENCE_TIMEOUT_MS)
  }

  _onMessage (transport, data) {
    if (transport !== this.transport) return
    this._touch()
    try {
      this._handle(data)
    } catch (err) {
      console.warn('collab: dropping a malformed message from the server', err)
    }
  }

  _handle (data) {
    const decoder = decoding.createDecoder(data)
    const type = decoding.readVarUint(decoder)
    if (type === MESSAGE_SYNC) {
      const kind = decoding.readVarUint(decoder)
      const payload = decoding.readVarUint8Array(decoder)
      if (kind === syncProtocol.messageYjsSyncStep1) {
        this.emit('server-sync', { kind: 'step1', payload })
        this._sendSync(syncProtocol.messageYjsSyncStep2, Y.encodeStateAsUpdate(this.doc, payload))
      } else if (kind === syncProtocol.messageYjsSyncStep2 || kind === syncProtocol.messageYjsUpdate) {
        Y.applyUpdate(this.doc, payload, this)
        this.emit('server-sync', { kind: kind === syncProtocol.messageYjsSyncStep2 ? 'step2' : 'update', payload })
        if (kind === syncProtocol.messageYjsSyncStep2 && !this.synced) {
          this.synced = true
          this.attempt = 0
          this.emit('synced')
        }
      }
    } else if (type === MESSAGE_AWARENESS) {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this)
    } else if (type === MESSAGE_QUERY_AWARENESS) {
      this._send(encodeAwareness(this.awareness, Array.from(this.awareness.getStates().keys())))
    } else if (type === MESSAGE_AUTH) {
      authProtocol.readAuthMessage(decoder, this.doc, (_ydoc, reason) => this.emit('denied', { reason }))
    }
  }

  /** Ask the server for everything missing from `stateVector` (stock step 1). */
  sendStep1 (stateVector) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_SYNC)
    encoding.writeVarUint(encoder, syncProtocol.messageYjsSyncStep1)
    encoding.writeVarUint8Array(encoder, stateVector)
    return this._send(encoding.toUint8Array(encoder))
  }

  /** Send one sync message now if connected; returns whether it went out. */
  sendUpdate (update) {
    return this._sendSync(syncProtocol.messageYjsUpdate, update)
  }

  _sendSync (kind, payload) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_SYNC)
    encoding.writeVarUint(encoder, kind)
    encoding.writeVarUint8Array(encoder, payload)
    const sent = this._send(encoding.toUint8Array(encoder))
    if (sent) this.emit('sent', { kind: kind === syncProtocol.messageYjsSyncStep2 ? 'step2' : 'update', payload })
    return sent
  }

  _send (message) {
    return this.connected && this.transport !== null && this.transport.send(message)
  }
}

const encodeAwareness = (awareness, clients) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_AWARENESS)
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
  return encoding.toUint8Array(encoder)
}
