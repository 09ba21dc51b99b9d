// Knowing, honestly, whether this tab's edits are durable on the server.
//
// The server echoes every sync step 2 / update a client sends back to that client once the
// store has committed it (a no-op for stock clients). We keep a second, "confirmed" Y.Doc that
// receives only what the server sends us: its step 2 answers, other people's updates and those
// echoes. The server never sends us our own edits before it has them, and it echoes ours only
// after the commit, so an edit of ours is saved exactly when the confirmed doc contains it
// (its structs are below the confirmed state vector and its deletions are in the confirmed
// delete set: Y.snapshotContainsUpdate).
//
// The confirmed doc is persisted next to the document in IndexedDB, so after a reload the
// edits the server may not have are exactly "document minus confirmed" and stay unsaved until
// a server echoes them. On every (re)connection we resend everything unconfirmed as one update
// message: the server may have committed an edit whose echo was lost with the old connection,
// and such a duplicate is echoed too (re-encoded), which settles it.
//
// IndexedDB writes are asynchronous and a reload can abort the last ones, so when the page is
// hidden or unloaded the unconfirmed edits are also stashed, synchronously, in localStorage.

import * as Y from 'yjs'
import { IndexeddbPersistence } from 'y-indexeddb'
import { toBase64, fromBase64 } from 'lib0/buffer'

const CHECK_DELAY_MS = 30
const EMPTY_STATE_VECTOR = Y.encodeStateVector(new Y.Doc())

export class Confirmations {
  /**
   * @param {Y.Doc} doc the document the editor edits
   * @param {string} room
   * @param {(origin: any) => boolean} isRemote true for origins that are not this tab's edits
   */
  constructor (doc, room, isRemote) {
    this.doc = doc
    this.room = room
    this.isRemote = isRemote
    this.shadow = new Y.Doc({ gc: true })
    this.shadowName = `collab-confirmed:${room}`
    this.persistence = new IndexeddbPersistence(this.shadowName, this.shadow)
    this.countKey = `collab:unsaved:${room}`
    this.stashKey = `collab:stash:${room}`
    /** @type {Array<{update: Uint8Array, weight: number}>} */
    this.pending = []
    this.listeners = new Set()
    this.checkTimer = null
    this.ready = false
    this.resyncing = false

    this._onDocUpdate = (update, origin) => {
      if (origin === this || this.isRemote(origin)) return
      this.pending.push({ update, weight: 1 })
      this._changed()
    }
    doc.on('update', this._onDocUpdate)
  }

  /** Call once the document has loaded from IndexedDB: edits restored from the browser are
   * unsaved until a server confirms them. */
  async start () {
    await this.persistence.whenSynced
    const stash = localStorage.getItem(this.stashKey)
    if (stash) {
      try {
        Y.applyUpdate(this.doc, fromBase64(stash), this)
      } catch (err) {
        console.warn('collab: ignoring an unreadable stash of unsaved edits', err)
      }
    }
    const stored = Number(localStorage.getItem(this.countKey) || '0')
    const unconfirmed = this._unconfirmed()
    if (unconfirmed !== null) {
      this.pending.unshift({ update: unconfirmed, weight: Math.max(1, stored) })
    }
    this.ready = true
    this._changed()
  }

  /** Number of this tab's edits the server has not confirmed as stored. */
  get unsaved () {
    let n = 0
    for (const p of this.pending) n += p.weight
    return n
  }

  /** Keep the unconfirmed edits where a reload cannot lose them (synchronous storage). */
  stash () {
    try {
      if (this.pending.length === 0) localStorage.removeItem(this.stashKey)
      else localStorage.setItem(this.stashKey, toBase64(Y.mergeUpdates(this.pending.map(p => p.update))))
    } catch (err) {
      console.warn('collab: could not stash unsaved edits', err)
    }
  }

  onChange (fn) {
    this.listeners.add(fn)
  }

  /** Wire to a SyncProvider: feed it what the server sends, resend the unconfirmed on connect. */
  attach (provider) {
    provider.on('server-sync', ({ kind, payload }) => {
      if (kind === 'step1') {
        this._checkServerState(payload, provider)
      } else {
        Y.applyUpdate(this.shadow, payload, 'server')
        this._scheduleCheck()
      }
    })
    provider.on('sent', ({ kind }) => {
      // Right after our step 2: the server now has all we have; this duplicate gets echoed.
      if (kind === 'step2' && this.pending.length > 0) {
        provider.sendUpdate(Y.mergeUpdates(this.pending.map(p => p.update)))
      }
    })
  }

  /** A server whose state vector is behind what it confirmed before has lost data (a fresh
   * store): forget the confirmations and learn its full state again. */
  _checkServerState (serverStateVector, provider) {
    const server = Y.decodeStateVector(serverStateVector)
    const confirmed = Y.decodeStateVector(Y.encodeStateVector(this.shadow))
    let behind = false
    confirmed.forEach((clock, client) => {
      if ((server.get(client) || 0) < clock) behind = true
    })
    if (!behind) return
    this._resetShadow()
    this.pending = [{ update: Y.encodeStateAsUpdate(this.doc), weight: Math.max(1, this.unsaved) }]
    this._changed()
    // Stock protocol: any step 1 is answered with a step 2; an empty state vector asks for all.
    queueMicrotask(() => provider.sendStep1(EMPTY_STATE_VECTOR))
  }

  _resetShadow () {
    const old = this.persistence
    this.shadow = new Y.Doc({ gc: true })
    const shadow = this.shadow
    old.clearData().then(() => {
      if (this.shadow === shadow) this.persistence = new IndexeddbPersistence(this.shadowName, shadow)
    })
  }

  /** Everything the document has that the confirmed doc lacks, or null when nothing. */
  _unconfirmed () {
    const update = Y.encodeStateAsUpdate(this.doc, Y.encodeStateVector(this.shadow))
    return Y.snapshotContainsUpdate(Y.snapshot(this.shadow), update) ? null : update
  }

  _scheduleCheck () {
    if (this.checkTimer !== null || this.pending.length === 0) return
    this.checkTimer = setTimeout(() => {
      this.checkTimer = null
      this._check()
    }, CHECK_DELAY_MS)
  }

  _check () {
    if (this.pending.length === 0) return
    const snap = Y.snapshot(this.shadow)
    const before = this.pending.length
    this.pending = this.pending.filter(p => !Y.snapshotContainsUpdate(snap, p.update))
    if (this.pending.length !== before) this._changed()
  }

  _changed () {
    if (this.ready) {
      const n = this.unsaved
      if (n === 0) {
        localStorage.removeItem(this.countKey)
        localStorage.removeItem(this.stashKey)
      } else localStorage.setItem(this.countKey, String(n))
    }
    for (const fn of this.listeners) fn(this.unsaved)
  }
}
