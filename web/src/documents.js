// One document as this browser holds it: the Y.Doc with its two fields, the copy in IndexedDB,
// the confirmations that make "Saved" true, and the provider that syncs it. The editor page
// opens one for the document it shows; the home page opens one briefly to rename a document,
// and writes a new one into IndexedDB when a file is imported.

import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { IndexeddbPersistence } from 'y-indexeddb'

import { SyncProvider, WebSocketTransport } from './provider.js'
import { PollTransport } from './poll.js'
import { TransportPolicy, forcedTransport, probeWebSocket } from './transports.js'
import { Confirmations } from './confirm.js'
import { socketUrl, pollUrl } from './urls.js'
import { Tokens } from './access.js'
import { readTextFile } from './files.js'
import { documentNameForFile, titleForFile } from './names.js'

/** The document's fields: the server reads both with its text(field) helper. */
export const TEXT_FIELD = 'text'
export const TITLE_FIELD = 'title'

const IDB_TIMEOUT_MS = 3000

/** The IndexedDB database that holds this browser's copy of `room`. */
export const localName = (room) => `collab:${room}`

/** Resolves when IndexedDB has loaded, or after a timeout (private windows may refuse it). */
const loaded = (persistence) => Promise.race([
  persistence.whenSynced,
  new Promise(resolve => setTimeout(resolve, IDB_TIMEOUT_MS))
])

/** WebSockets, or the HTTP fallback where they cannot pass (transports.js decides); each
 * connection carries the token this browser holds for the document, if any. */
export const defaultTransports = (tokens = new Tokens()) => new TransportPolicy({
  socket: (room) => new WebSocketTransport(socketUrl(room, document.baseURI, tokens.get(room))),
  poll: (room) => new PollTransport(pollUrl(room, document.baseURI, tokens.get(room))),
  probe: (room) => probeWebSocket(socketUrl(room, document.baseURI, tokens.get(room))),
  forced: forcedTransport()
})

/** Number of edits of `room` that this browser holds and the server has not confirmed. */
export const unsavedCount = (room) => Number(localStorage.getItem(`collab:unsaved:${room}`) || '0')

export class DocumentSession {
  /**
   * @param {string} room the raw room name
   * @param {{presence?: boolean, makeTransport?: (room: string) => any}} options
   *   presence: false for a session nobody sees (no awareness state is announced)
   */
  constructor (room, { presence = true, makeTransport = null } = {}) {
    this.room = room
    this.doc = new Y.Doc()
    this.text = this.doc.getText(TEXT_FIELD)
    this.title = this.doc.getText(TITLE_FIELD)
    this.awareness = new Awareness(this.doc)
    if (!presence) this.awareness.setLocalState(null)
    this.transports = makeTransport === null ? defaultTransports() : null
    this.makeTransport = makeTransport || this.transports.make
    this.local = new IndexeddbPersistence(localName(room), this.doc)
    this.provider = null
    this.confirmations = new Confirmations(this.doc, room,
      origin => origin === this.local || (this.provider !== null && origin === this.provider))
  }

  /** This browser's copy, with the edits it holds that the server has not confirmed. */
  async load () {
    await loaded(this.local)
    await this.confirmations.start()
  }

  connect () {
    this.provider = new SyncProvider(this.doc, this.awareness, this.makeTransport, this.room)
    if (this.transports) this.transports.attach(this.provider)
    this.confirmations.attach(this.provider)
    this.provider.connect()
    return this.provider
  }

  /** Resolves true once synced with the server, false after `ms` without it. */
  whenSynced (ms) {
    return this._within(ms, (done) => {
      if (this.provider?.synced) return done(true)
      this.provider.on('synced', () => done(true))
    })
  }

  /** Resolves true once the server has stored every edit made here, false after `ms`. */
  whenSaved (ms) {
    return this._within(ms, (done) => {
      if (this.provider?.synced && this.confirmations.unsaved === 0) return done(true)
      this.confirmations.onChange((n) => { if (n === 0 && this.provider?.synced) done(true) })
      this.provider.on('synced', () => { if (this.confirmations.unsaved === 0) done(true) })
    })
  }

  _within (ms, wait) {
    return new Promise((resolve) => {
      let settled = false
      const done = (value) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        resolve(value)
      }
      const timer = setTimeout(() => done(false), ms)
      wait(done)
    })
  }

  /** Replace the title (a whole new title, as when renaming from a list). */
  setTitle (title) {
    if (this.title.toString() === title) return
    this.doc.transact(() => {
      this.title.delete(0, this.title.length)
      this.title.insert(0, title)
    })
  }

  /** Stop syncing; what the server has not confirmed stays in this browser and is sent when the
   * document is next opened. */
  close () {
    this.confirmations.stash()
    if (this.transports) this.transports.stop()
    if (this.provider) this.provider.destroy()
    this.local.destroy()
  }
}

/** Waits until every write IndexedDB has queued for `persistence` is committed: a transaction
 * on the same store runs only after the ones queued before it have finished. */
const flushed = async (persistence) => {
  await persistence.whenSynced
  const db = persistence.db
  await new Promise((resolve, reject) => {
    const tx = db.transaction(['updates'], 'readonly')
    tx.objectStore('updates').count()
    tx.oncomplete = resolve
    tx.onerror = () => reject(tx.error)
    tx.onabort = () => reject(tx.error)
  })
}

/** Make a new document in this browser only: it reaches the server when it is opened (as an
 * unconfirmed edit, so the page says "Unsaved" until the server has stored it). */
export const createLocalDocument = async (room, { title = '', text = '' }) => {
  const doc = new Y.Doc()
  doc.transact(() => {
    doc.getText(TITLE_FIELD).insert(0, title)
    doc.getText(TEXT_FIELD).insert(0, text)
  })
  const persistence = new IndexeddbPersistence(localName(room), doc)
  try {
    await flushed(persistence)
  } finally {
    await persistence.destroy()
    doc.destroy()
  }
}

/** A new document in this browser from a .md / .txt file; returns its room name. Throws
 * ImportProblem (from files.js) for a file that is not text. */
export const documentFromFile = async (file) => {
  const text = await readTextFile(file)
  const room = documentNameForFile(file.name)
  await createLocalDocument(room, { title: titleForFile(file.name), text })
  return room
}
