// One y-websocket client: the `ws` socket, a Yjs document where it needs one, the sync
// protocol of y-protocols, and the bookkeeping that turns received bytes into deliveries.
//
// Receivers do no CRDT work on the hot path unless asked (replica "full"): every edit inserts
// a marker "[writer:seq]" and Yjs carries inserted text verbatim inside an update, so a
// receiver finds the markers in the raw bytes, looks up the send time and counts the delivery.
// The updates are kept and merged once at the end for the convergence check. Writers keep a
// real Y.Doc, so their edits are genuine Yjs updates at real positions of the shared text.
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import * as awarenessProtocol from 'y-protocols/awareness'
import { LeanSocket } from './socket.mjs'
import { Window } from './stats.mjs'

export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_AUTH = 2
export const MSG_QUERY_AWARENESS = 3
const STEP1 = 0
const STEP2 = 1
const UPDATE = 2
const REMOTE = Symbol('remote')
const EMPTY_UPDATE = Y.encodeStateAsUpdate(new Y.Doc())
const JUMP = 0.05 // chance per edit that the cursor moves to a random position
const BACKSPACE = 0.15 // chance per edit that a few characters before the cursor go first
const OPEN = 1

const syncMessage = (type, payload) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_SYNC)
  encoding.writeVarUint(encoder, type)
  encoding.writeVarUint8Array(encoder, payload)
  return encoding.toUint8Array(encoder)
}

const awarenessMessage = (awareness, clients) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MSG_AWARENESS)
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
  return encoding.toUint8Array(encoder)
}

/** The updates a receiver got, back to back in one growing buffer, for the convergence check
 * at the end. A copy per update made hundreds of thousands of small objects live through the
 * whole run, which every young collection of the collector copied again: pauses of 5 to 20 ms
 * in the middle of the latencies being measured. */
export class UpdateLog {
  constructor () {
    this.bytes = new Uint8Array(1024)
    this.size = 0
    this.ends = [] // where each update ends in `bytes`
  }

  get length () {
    return this.ends.length
  }

  push (update) {
    const end = this.size + update.length
    if (end > this.bytes.length) {
      const grown = new Uint8Array(Math.max(end, 2 * this.bytes.length))
      grown.set(this.bytes.subarray(0, this.size))
      this.bytes = grown
    }
    this.bytes.set(update, this.size)
    this.size = end
    this.ends.push(end)
  }

  /** Every update, in order (views into the log). */
  updates () {
    const all = []
    let start = 0
    for (const end of this.ends) {
      all.push(this.bytes.subarray(start, end))
      start = end
    }
    return all
  }
}

/** Shared state of one generator process: send times, the current window, connection errors. */
export class Run {
  constructor ({ url, replica = 'lazy', deflate = false, connectTimeout = 10, query = '', socket = 'lean', spread = 'rooms' }) {
    Object.assign(this, { url, replica, deflate, connectTimeout, query, socket, spread })
    // several servers (comma-separated): each room on one of them, or each room's clients
    // dealt over all of them (`spread`)
    this.urls = url.split(',').map((u) => u.replace(/\/$/, ''))
    this.sentAt = [] // per writer: send time (ms) of each seq
    this.presenceSentAt = new Map() // awareness client id -> send time (ms) of each clock
    this.window = new Window()
    this.connectionErrors = 0
    this.closeReasons = {}
    this.authDenied = 0
    this.undecodable = 0
  }

  newWriter () {
    this.sentAt.push([])
    return this.sentAt.length - 1
  }

  roomUrl (room, client = 0) {
    const urls = this.urls
    const base = urls.length === 1 ? urls[0] : urls[(this.spread === 'clients' ? client : room.index) % urls.length]
    return base + '/' + room.name + (this.query ? '?' + this.query : '')
  }

  lostConnection (code, reason) {
    this.connectionErrors += 1
    const key = `${code} ${reason}`.trim()
    this.closeReasons[key] = (this.closeReasons[key] || 0) + 1
  }
}

/** A room as the generator sees it: its clients and how many are synced now. */
export class Room {
  constructor (name, index = 0) {
    this.name = name
    this.index = index // its place among the run's rooms (which server it is on, of several)
    this.clients = []
    this.live = 0
  }
}

export class Client {
  constructor (run, room, { writer = false, presence = false, relayPresence = false, wantLength = 0 } = {}) {
    this.run = run
    this.room = room
    this.position = room.clients.length // its place in the room (which server, with --spread clients)
    this.writerId = writer ? run.newWriter() : -1
    this.ws = null
    this.alive = false
    this.closing = false
    this.syncedAt = 0
    this.synced = new Promise((resolve, reject) => { this._synced = { resolve, reject } })
    this.synced.catch(() => {})
    this.lastSeen = [] // per writer id: highest seq received
    this.received = new UpdateLog() // lazy receivers: update payloads, merged at the end
    this.pending = [] // writers: foreign updates, applied before the next edit
    this.syncPayload = null
    this.cursor = 0
    this.startedAt = 0
    // the time the client first held a text of `wantLength` characters: some servers answer a
    // sync before their store has loaded the document, and send its content later
    this.wantLength = wantLength
    this.contentAt = 0
    this.content = new Promise((resolve) => { this._content = resolve })
    const keepDoc = writer || presence || run.replica === 'full'
    this.doc = keepDoc ? new Y.Doc() : null
    this.text = this.doc ? this.doc.getText('text') : null
    if (writer) {
      this.doc.on('update', (update, origin) => {
        if (origin !== REMOTE) this.send(syncMessage(UPDATE, update))
      })
    }
    this.awareness = null
    this.presenceSeen = null
    if (presence) {
      this.awareness = new awarenessProtocol.Awareness(this.doc)
      this.presenceSeen = new Map() // awareness client id -> highest clock received
      this.relayPresence = relayPresence
      this.awareness.on('update', ({ added, updated, removed }, origin) => {
        if (origin === REMOTE && !this.relayPresence) return
        this.send(awarenessMessage(this.awareness, added.concat(updated, removed)))
      })
    }
  }

  /** Connect and send sync step 1 (and the local presence, as the stock provider does). */
  open () {
    const run = this.run
    return new Promise((resolve, reject) => {
      const url = run.roomUrl(this.room, this.position)
      const opened = () => {
        this.alive = true
        const sv = this.doc ? Y.encodeStateVector(this.doc) : new Uint8Array([0])
        this.ws.send(syncMessage(STEP1, sv))
        if (this.awareness && this.awareness.getLocalState() !== null) {
          this.ws.send(awarenessMessage(this.awareness, [this.doc.clientID]))
        }
        resolve()
      }
      const failed = (err) => {
        if (!this.alive) reject(err)
      }
      if (run.socket === 'ws' || run.deflate) {
        const ws = new WebSocket(url, { perMessageDeflate: run.deflate, handshakeTimeout: run.connectTimeout * 1000 })
        ws.binaryType = 'nodebuffer'
        ws.on('open', opened)
        ws.on('message', (data) => this.onMessage(data))
        ws.on('close', (code, reason) => this.onClose(code, reason.toString()))
        ws.on('error', failed)
        this.ws = ws
      } else {
        const socket = new LeanSocket(url, { handshakeTimeout: run.connectTimeout * 1000 })
        socket.onopen = opened
        socket.onmessage = (data) => this.onMessage(data)
        socket.onclose = (code, reason) => this.onClose(code, reason)
        socket.onerror = failed
        this.ws = socket
      }
    })
  }

  send (message) {
    if (this.ws !== null && this.ws.readyState === OPEN) this.ws.send(message)
  }

  onClose (code, reason) {
    if (this.syncedAt && this.alive) this.room.live -= 1
    const wasAlive = this.alive
    this.alive = false
    this.dropPresence()
    if (!this.closing && wasAlive) this.run.lostConnection(code, reason)
    this._synced.reject(new Error(`closed before sync: ${code} ${reason}`))
  }

  close () {
    this.closing = true
    this.dropPresence()
    if (this.ws !== null) this.ws.close(1000)
  }

  dropPresence () {
    if (this.awareness !== null && !this.presenceDropped) {
      this.presenceDropped = true
      this.awareness.destroy()
    }
  }

  onMessage (data) {
    try {
      this.handle(data)
    } catch (err) {
      // a message this client cannot read is the server's fault: count it, keep the run going
      this.run.undecodable += 1
      if (this.run.undecodable === 1) process.stderr.write(`loadgen: a message could not be decoded: ${err.message}\n`)
    }
  }

  handle (data) {
    const now = performance.now()
    const window = this.run.window
    window.messages += 1
    window.bytes += data.length
    const decoder = decoding.createDecoder(data)
    const type = decoding.readVarUint(decoder)
    if (type === MSG_SYNC) {
      const sub = decoding.readVarUint(decoder)
      const payload = decoding.readVarUint8Array(decoder)
      if (sub === UPDATE) {
        this.onUpdate(payload, now)
      } else if (sub === STEP2) {
        this.onUpdate(payload, now)
        if (!this.syncedAt) {
          this.syncPayload = payload.slice()
          this.syncedAt = now
          this.room.live += 1
          this._synced.resolve(now)
        }
      } else if (sub === STEP1) {
        this.send(syncMessage(STEP2, this.doc ? Y.encodeStateAsUpdate(this.doc, payload) : EMPTY_UPDATE))
      }
    } else if (type === MSG_AWARENESS) {
      this.onAwareness(decoding.readVarUint8Array(decoder), now)
    } else if (type === MSG_AUTH) {
      this.run.authDenied += 1
    } else if (type === MSG_QUERY_AWARENESS && this.awareness) {
      this.send(awarenessMessage(this.awareness, Array.from(this.awareness.getStates().keys())))
    }
  }

  onUpdate (payload, now) {
    const window = this.run.window
    const sentAt = this.run.sentAt
    const n = payload.length
    let foreign = false
    let marked = false
    let i = payload.indexOf(0x5b) // '['
    while (i !== -1) {
      let j = i + 1
      let writer = 0
      let digits = 0
      let c = 0
      while (j < n && (c = payload[j]) >= 48 && c <= 57 && digits < 10) { writer = writer * 10 + c - 48; j++; digits++ }
      if (digits > 0 && c === 0x3a) { // ':'
        j++
        let seq = 0
        digits = 0
        while (j < n && (c = payload[j]) >= 48 && c <= 57 && digits < 13) { seq = seq * 10 + c - 48; j++; digits++ }
        if (digits > 0 && c === 0x5d) { // ']'
          marked = true
          if (writer === this.writerId) {
            window.echoes += 1
          } else if (writer < sentAt.length && seq < sentAt[writer].length) {
            foreign = true
            const last = this.lastSeen[writer] ?? -1
            if (seq > last) {
              window.delivered += 1
              if (seq > last + 1) window.gaps += seq - last - 1
              this.lastSeen[writer] = seq
              window.latencies.push(now - sentAt[writer][seq])
            } else {
              window.late += 1
            }
          }
          i = payload.indexOf(0x5b, j + 1)
          continue
        }
      }
      i = payload.indexOf(0x5b, i + 1)
    }
    if (this.writerId >= 0) {
      if (foreign || !marked) this.pending.push(payload.slice())
    } else if (this.doc !== null) {
      Y.applyUpdate(this.doc, payload, REMOTE)
    } else {
      this.received.push(payload)
      if (this.wantLength && !this.contentAt && textOf(Y.mergeUpdates(this.received.updates())).length >= this.wantLength) {
        this.contentAt = now
        this._content(now)
      }
    }
  }

  onAwareness (payload, now) {
    if (this.awareness === null) return
    const window = this.run.window
    const sentAt = this.run.presenceSentAt
    const own = this.doc.clientID
    const decoder = decoding.createDecoder(payload)
    const count = decoding.readVarUint(decoder)
    for (let k = 0; k < count; k++) {
      const client = decoding.readVarUint(decoder)
      const clock = decoding.readVarUint(decoder)
      const stateLength = decoding.readVarUint(decoder)
      decoder.pos += stateLength // skip the state's JSON
      if (client === own) {
        window.echoes += 1
        continue
      }
      const times = sentAt.get(client)
      const last = this.presenceSeen.get(client) ?? -1
      if (clock > last) {
        this.presenceSeen.set(client, clock)
        if (times !== undefined && times[clock] !== undefined) {
          window.delivered += 1
          window.latencies.push(now - times[clock])
          for (let skipped = last + 1; skipped < clock; skipped++) {
            if (times[skipped] !== undefined) window.gaps += 1
          }
        }
      } else if (times !== undefined && times[clock] !== undefined) {
        window.late += 1
      }
    }
    if (this.relayPresence) awarenessProtocol.applyAwarenessUpdate(this.awareness, payload, REMOTE)
  }

  /** Type one token at the cursor like a person: now and then the cursor jumps, and sometimes
   * a few characters before it are deleted first. Typing at a cursor keeps the engine's cost
   * per edit flat, where a fresh random position every time fragments the text. */
  edit (rng) {
    if (this.pending.length) {
      for (const update of this.pending) Y.applyUpdate(this.doc, update, REMOTE)
      this.pending.length = 0
    }
    const length = this.text.length
    const times = this.run.sentAt[this.writerId]
    const token = `[${this.writerId}:${times.length}]`
    if (rng() < JUMP || this.cursor > length) this.cursor = Math.floor(rng() * (length + 1))
    let pos = this.cursor
    let remove = 0
    if (length > 64 && rng() < BACKSPACE) {
      remove = Math.min(1 + Math.floor(rng() * 4), pos)
      pos -= remove
    }
    times.push(performance.now())
    this.doc.transact(() => {
      if (remove) this.text.delete(pos, remove)
      this.text.insert(pos, token)
    })
    this.cursor = pos + token.length
  }

  /** Insert a whole text at the end, in chunks (one update each), for seeding documents. */
  insert (text, chunk = 16384) {
    for (let at = 0; at < text.length; at += chunk) {
      this.text.insert(this.text.length, text.slice(at, at + chunk))
    }
  }

  /** Move the cursor: one awareness update, as an editor sends on every selection change. */
  movePresence (rng) {
    const clock = (this.awareness.meta.get(this.doc.clientID)?.clock ?? -1) + 1
    let times = this.run.presenceSentAt.get(this.doc.clientID)
    if (times === undefined) {
      times = []
      this.run.presenceSentAt.set(this.doc.clientID, times)
    }
    times[clock] = performance.now()
    this.lastMoveClock = clock
    const anchor = Math.floor(rng() * 10000)
    this.awareness.setLocalStateField('cursor', { anchor, head: anchor + Math.floor(rng() * 20) })
  }

  /** This client's text, from everything it received (off the clock). */
  finalText () {
    if (this.doc !== null) {
      for (const update of this.pending) Y.applyUpdate(this.doc, update, REMOTE)
      this.pending.length = 0
      return this.text.toString()
    }
    return textOf(this.received.length ? Y.mergeUpdates(this.received.updates()) : null)
  }
}

/** The text of a sync step 2 payload. Its document is read once and dropped, so it gets a fixed
 * guid: the default one costs ~30 calls to the system's random source (lib0's uuidv4), which
 * made opening many documents cost the generator a sixth more. */
export const textOf = (payload) => {
  const doc = new Y.Doc({ guid: 'scratch' })
  if (payload && payload.length) Y.applyUpdate(doc, payload)
  return doc.getText('text').toString()
}
