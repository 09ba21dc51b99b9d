// The HTTP fallback as a transport of the SyncProvider, for networks where WebSockets cannot
// pass. The messages are the y-protocols ones the WebSocket carries, in POST bodies (each
// prefixed with its length); any server instance can answer any request, because each poll
// carries our state vector and the version token of the last answer.
//
// - A poll (a body with a sync step 1) waits on the server until there is something for us,
//   then is sent again at once: an idle page makes one request per poll timeout (~25 s).
// - Everything the provider sends goes out in a separate request, one at a time, batched with
//   whatever queued behind it; its answer carries the durable acks. A failed one is sent again
//   (updates are idempotent) a few times before the transport gives up.
// - When the page goes, the provider asks for a goodbye: a beacon with whatever is still queued
//   (its presence removal), so that the others see us leave at once, not after the server's hold.

import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

export const VERSION_HEADER = 'Collab-Version'
const SEND_TRIES = 4
const SEND_RETRY_MS = 250
const KEEPALIVE_MAX_BYTES = 60000 // browsers refuse keepalive bodies past 64 KiB in all
const EMPTY_STATE_VECTOR = new Uint8Array([0])
const MESSAGE_SYNC = 0
const SYNC_STEP1 = 0

/** A request or answer body: every message prefixed with its length (lib0 varUint8Array). */
export const encodeBody = (frames) => {
  const encoder = encoding.createEncoder()
  for (const frame of frames) encoding.writeVarUint8Array(encoder, frame)
  return encoding.toUint8Array(encoder)
}

export const decodeBody = (data) => {
  const decoder = decoding.createDecoder(data)
  const frames = []
  while (decoding.hasContent(decoder)) frames.push(decoding.readVarUint8Array(decoder))
  return frames
}

const step1 = (stateVector) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MESSAGE_SYNC)
  encoding.writeVarUint(encoder, SYNC_STEP1)
  encoding.writeVarUint8Array(encoder, stateVector)
  return encoding.toUint8Array(encoder)
}

/** The state vector of a sync step 1 message, or null for any other message. */
const step1Vector = (data) => {
  if (data.length < 2 || data[0] !== MESSAGE_SYNC || data[1] !== SYNC_STEP1) return null
  const decoder = decoding.createDecoder(data)
  decoding.readVarUint(decoder)
  decoding.readVarUint(decoder)
  return decoding.readVarUint8Array(decoder)
}

/** The WebSocket close code that means what an HTTP refusal means (docs/protocol.md), so that
 * the provider treats both transports alike: 44xx are final, the others are retried. */
export const closeCodeFor = (status, reason = '') => {
  if (status === 503) return /restart/i.test(reason) ? 1012 : 1013
  const codes = { 400: 1002, 401: 4401, 403: 4403, 404: 4410, 410: 4410, 413: 1009, 429: 4429, 500: 1011 }
  return codes[status] || 1006
}

const READ_ONLY = 'read-only'

const randomKey = () => {
  const bytes = crypto.getRandomValues(new Uint8Array(12))
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

export class PollTransport {
  /**
   * @param {string} url the room's fallback URL (`…/poll/<room>?acks=1`)
   * @param {{fetch?: typeof fetch, sendBeacon?: (url: string, data: Blob) => boolean, target?: EventTarget}} options
   */
  constructor (url, { fetch = globalThis.fetch.bind(globalThis), sendBeacon, target = globalThis } = {}) {
    this.kind = 'poll'
    this.url = new URL(url)
    this.fetch = fetch
    this.sendBeacon = sendBeacon || (typeof navigator !== 'undefined' && navigator.sendBeacon
      ? (u, d) => navigator.sendBeacon(u, d)
      : null)
    this.target = target
    this.client = randomKey()
    this.open = false
    this.handlers = null
    this.version = null
    this.askFrom = null
    this.outbox = []
    this.flushing = false
    this.readOnly = false
    this.polling = null
    this.requests = 0
    this._onPageShow = (event) => { if (event.persisted && this.open) this._fail(1006, 'the page was restored') }
  }

  /** @param {{onOpen: Function, onMessage: Function, onClose: Function, onError: Function,
   *   stateVector?: () => Uint8Array, onAlive?: Function}} handlers */
  connect (handlers) {
    this.handlers = handlers
    this.open = true
    this.target.addEventListener?.('pageshow', this._onPageShow)
    // Nothing to open: the first poll goes out with the provider's sync step 1.
    queueMicrotask(() => { if (this.open) handlers.onOpen() })
  }

  /** @param {Uint8Array} data */
  send (data) {
    if (!this.open) return false
    const vector = step1Vector(data)
    if (vector !== null) {
      // Ask afresh from this state vector (the first time, or when the provider wants all again).
      this.askFrom = vector
      this.version = null
      this._startPolling()
      return true
    }
    this.outbox.push(data)
    if (!this.flushing) {
      this.flushing = true
      queueMicrotask(() => this._flush())
    }
    return true
  }

  /** The page is going: a beacon tells the server, with whatever is still queued. */
  goodbye () {
    this._goodbye(true)
  }

  close () {
    if (!this.open) return
    this._goodbye(false)
    this._stop()
    // Asynchronously, as a WebSocket's close event: a provider that drops us has moved on.
    queueMicrotask(() => this.handlers.onClose({ code: 1000, reason: '' }))
  }

  _target (params) {
    const url = new URL(this.url)
    url.searchParams.set('client', this.client)
    for (const [name, value] of Object.entries(params)) if (value !== null) url.searchParams.set(name, value)
    return url.href
  }

  _startPolling () {
    if (this.polling) this.polling.abort()
    const polling = new AbortController()
    this.polling = polling
    this._poll(polling).catch((err) => {
      if (this.open && this.polling === polling) this._fail(1006, `the fallback failed: ${err.message}`)
    })
  }

  async _poll (polling) {
    while (this.open && this.polling === polling) {
      const vector = this.askFrom || (this.handlers.stateVector ? this.handlers.stateVector() : EMPTY_STATE_VECTOR)
      this.askFrom = null
      let response
      try {
        this.requests += 1
        response = await this.fetch(this._target({ wait: '1', version: this.version }), {
          method: 'POST', body: encodeBody([step1(vector)]), signal: polling.signal, cache: 'no-store'
        })
      } catch (err) {
        if (polling.signal.aborted) return
        return this._fail(1006, 'no answer from the server')
      }
      if (!response.ok) {
        const reason = (await response.text().catch(() => '')).trim()
        if (this.polling === polling) this._fail(closeCodeFor(response.status, reason), reason)
        return
      }
      const data = new Uint8Array(await response.arrayBuffer())
      if (!this.open || this.polling !== polling) return
      this.version = response.headers.get(VERSION_HEADER) || this.version
      this._deliver(data)
    }
  }

  async _flush () {
    try {
      while (this.open && this.outbox.length > 0) {
        let batch = this.outbox.splice(0)
        if (this.readOnly) batch = batch.filter(frame => frame[0] !== MESSAGE_SYNC)
        if (batch.length > 0 && !(await this._sendBatch(batch))) return
      }
    } finally {
      this.flushing = false
    }
  }

  /** Send one batch until the server takes it; false when the transport gave up. */
  async _sendBatch (batch) {
    for (let tries = 1; this.open; tries++) {
      const body = encodeBody(batch)
      let response = null
      try {
        this.requests += 1
        response = await this.fetch(this._target({}), {
          method: 'POST', body, cache: 'no-store', keepalive: body.length <= KEEPALIVE_MAX_BYTES
        })
      } catch {}
      if (!this.open) return false
      if (response && response.ok) {
        this._deliver(new Uint8Array(await response.arrayBuffer()))
        return true
      }
      const reason = response ? (await response.text().catch(() => '')).trim() : 'no answer from the server'
      if (response && response.status === 403 && reason === READ_ONLY) {
        // Our changes go nowhere, as over a WebSocket; our presence still counts.
        this.readOnly = true
        batch = batch.filter(frame => frame[0] !== MESSAGE_SYNC)
        if (batch.length === 0) return true
        continue
      }
      const retried = !response || response.status >= 500 || response.status === 429
      if (!retried || tries >= SEND_TRIES) {
        this._fail(response ? closeCodeFor(response.status, reason) : 1006, reason)
        return false
      }
      await new Promise(resolve => setTimeout(resolve, SEND_RETRY_MS * tries))
    }
    return false
  }

  _deliver (data) {
    if (this.handlers.onAlive) this.handlers.onAlive()
    for (const frame of decodeBody(data)) {
      if (!this.open) return
      this.handlers.onMessage(frame)
    }
  }

  /** Tell the server we are leaving, with what is still queued; a beacon when the page goes. */
  _goodbye (beacon) {
    if (!this.open) return
    const frames = this.outbox.splice(0).filter(frame => !this.readOnly || frame[0] !== MESSAGE_SYNC)
    const url = this._target({ bye: '1' })
    const body = encodeBody(frames)
    if (beacon && this.sendBeacon) {
      this.sendBeacon(url, new Blob([body], { type: 'application/octet-stream' }))
    } else {
      this.fetch(url, { method: 'POST', body, cache: 'no-store', keepalive: body.length <= KEEPALIVE_MAX_BYTES })
        .catch(() => {})
    }
  }

  _fail (code, reason) {
    if (!this.open) return
    this._stop()
    this.handlers.onClose({ code, reason })
  }

  _stop () {
    this.open = false
    if (this.polling) this.polling.abort()
    this.polling = null
    this.outbox = []
    this.target.removeEventListener?.('pageshow', this._onPageShow)
  }
}
