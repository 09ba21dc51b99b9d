// The home page: start a document (blank, or from a .md / .txt file chosen or dropped anywhere
// on the page); find the documents this browser has opened, most recent first (this list lives
// in this browser, so it works offline), and, where the server lists them to this browser, every
// document on the server, a page at a time and searched on the server. Open, rename or delete
// (after a confirmation) from either list.

import { DocumentSession, unsavedCount, localName } from './documents.js'
import { RecentDocuments, matching } from './recent.js'
import { listingPath, parseListing, listingProblem, formatSize } from './listing.js'
import { TITLE_MAX } from './title.js'
import { $, el, showToast, timeAgo, fullTime, displayName } from './ui.js'
import { documentHref, apiUrl } from './urls.js'
import { newDocument, importFiles } from './start.js'
import { Tokens } from './access.js'

const SEARCH_DELAY_MS = 250

const RENAME_SYNC_MS = 5000
const RENAME_SAVE_MS = 10000

const docIcon = () => {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg')
  svg.setAttribute('viewBox', '0 0 24 24')
  svg.setAttribute('aria-hidden', 'true')
  svg.classList.add('doc-icon')
  svg.innerHTML = '<path d="M7 3h7l5 5v13H7z"/><path d="M14 3v5h5"/><path d="M10 13h6M10 17h6"/>'
  return svg
}

/**
 * Rename `room` from outside its page: open it (this browser's copy, then the server), replace
 * the title once synced (so as not to merge with a title this browser has not seen yet), and wait
 * until the server has stored it. Offline, the new title waits in this browser and is sent when
 * the document is next opened. Resolves with whether the server has it.
 */
export const renameDocument = async (room, title) => {
  const session = new DocumentSession(room, { presence: false })
  try {
    await session.load()
    session.connect()
    await session.whenSynced(RENAME_SYNC_MS)
    session.setTitle(title)
    return await session.whenSaved(RENAME_SAVE_MS)
  } finally {
    session.close()
  }
}

/** Forget what this browser holds of a deleted document: its copy, its unsaved edits. */
const forgetLocalCopy = (room) => {
  for (const key of [`collab:unsaved:${room}`, `collab:stash:${room}`]) localStorage.removeItem(key)
  new Tokens().forget(room)
  try {
    indexedDB.deleteDatabase(localName(room))
  } catch (err) {
    console.warn('collab: could not remove the local copy of a deleted document', err)
  }
}

/**
 * Delete `room` on the server (DELETE api/docs/<room>: its live pages are closed with 4410 and
 * it does not come back), then here. Resolves with null, or what went wrong in words.
 */
export const deleteDocument = async (room) => {
  let response
  try {
    response = await fetch(apiUrl(`api/docs/${room}`), { method: 'DELETE', cache: 'no-store', headers: new Tokens().headers(room) })
  } catch {
    return 'The server cannot be reached; nothing was deleted. Try again when online.'
  }
  // 404: it never reached the server (made here while offline, never opened online).
  if (response.ok || response.status === 404 || response.status === 410) {
    forgetLocalCopy(room)
    return null
  }
  if (response.status === 401 || response.status === 403) return 'You may not delete this document.'
  const reason = (await response.text().catch(() => '')).trim()
  return `The server did not delete it${reason ? `: ${reason}` : ''}.`
}

/** A modal question; resolves true when `confirm` was chosen, false for cancel or Escape. */
export const confirmDialog = ({ title, text, confirm }) => {
  const dialog = $('confirm-dialog')
  $('confirm-title').textContent = title
  $('confirm-text').textContent = text
  $('confirm-yes').textContent = confirm
  dialog.returnValue = ''
  return new Promise((resolve) => {
    const answer = (value) => () => dialog.close(value)
    const yes = answer('yes')
    const no = answer('no')
    $('confirm-yes').addEventListener('click', yes)
    $('confirm-no').addEventListener('click', no)
    dialog.addEventListener('close', () => {
      $('confirm-yes').removeEventListener('click', yes)
      $('confirm-no').removeEventListener('click', no)
      resolve(dialog.returnValue === 'yes')
    }, { once: true })
    dialog.showModal()
    $('confirm-no').focus()
  })
}

const ICONS = {
  rename: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 20h4L19 9l-4-4L4 16z"/><path d="m13.5 6.5 4 4"/></svg>',
  remove: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6 6 18"/></svg>',
  delete: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4.5 7h15M10 11v6M14 11v6"/><path d="M6.5 7l1 13h9l1-13M9.5 7V4h5v3"/></svg>'
}

/**
 * Turn a row's title into a field; Enter or leaving the field renames the document (for everyone:
 * renameDocument), Escape keeps the title. `done(title|null, stored)` is called once, with null
 * when nothing changed.
 */
const editRowTitle = (row, current, { onStart = () => {}, done }) => {
  const field = el('input', {
    class: 'rename-field', type: 'text', value: current, maxlength: String(TITLE_MAX),
    placeholder: 'Untitled document', 'aria-label': 'New title', spellcheck: 'false'
  })
  row.querySelector('.row-title').replaceWith(field)
  row.classList.add('renaming')
  field.focus()
  field.select()
  let finished = false
  const finish = async (commit) => {
    if (finished) return
    finished = true
    const title = field.value.replace(/\s+/g, ' ').trim()
    if (!commit || title === current.trim()) {
      done(null, false)
      return
    }
    field.disabled = true
    row.classList.add('busy')
    onStart(title)
    let stored = false
    try {
      stored = await renameDocument(row.dataset.room, title)
    } catch (err) {
      console.warn('collab: rename failed', err)
    }
    done(title, stored)
    showToast(stored ? `Renamed to “${title}”` : 'Renamed in this browser; the server gets it when the document is next opened online')
  }
  field.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') { event.preventDefault(); finish(true) }
    if (event.key === 'Escape') { event.preventDefault(); finish(false) }
  })
  field.addEventListener('blur', () => finish(true))
  // A click on the row's link while renaming should not open the document.
  row.querySelector('.doc-link').addEventListener('click', (event) => { if (!finished) event.preventDefault() }, { once: true })
}

/** Ask, then delete `room` everywhere; resolves whether it was deleted. */
export const confirmAndDelete = async (room, title) => {
  const shown = title.trim() || displayName(room)
  const sure = await confirmDialog({
    title: `Delete “${shown}”?`,
    text: 'It is deleted for everyone, on the server and in every browser that has it open. This cannot be undone.',
    confirm: 'Delete'
  })
  if (!sure) return false
  const problem = await deleteDocument(room)
  if (problem !== null) {
    showToast(problem, { ms: 4000 })
    return false
  }
  showToast(`Deleted “${shown}”`)
  return true
}

/**
 * One document in a list: its link (title, name, a note, a time) and its actions, each
 * {name, label, icon, run(row)}. The same row shows a document of this browser's list and, once
 * the server lists its documents (GET api/docs), one of the server's (with "delete" as an action).
 */
export const documentRow = ({ room, title, note = null, time = null, timeLabel = '', actions = [] }) => {
  const name = displayName(room)
  const shown = title.trim()
  const link = el('a', { class: 'doc-link', href: documentHref(room) },
    docIcon(),
    el('span', { class: 'row-text' },
      el('span', { class: shown ? 'row-title' : 'row-title untitled' }, shown || 'Untitled document'),
      el('span', { class: note ? 'row-meta unsaved' : 'row-meta' }, note ? `${name} · ${note}` : name)),
    time === null
      ? null
      : el('time', { class: 'row-time', datetime: new Date(time).toISOString(), title: `${timeLabel} ${fullTime(time)}` },
        timeAgo(time)))
  const buttons = el('span', { class: 'row-actions' })
  const row = el('li', { class: 'doc-row', dataset: { room } }, link, buttons)
  for (const action of actions) {
    const button = el('button', {
      class: 'icon-button', type: 'button', title: action.label, 'aria-label': `${action.label}: ${shown || name}`,
      dataset: { action: action.name }
    })
    button.innerHTML = action.icon
    button.addEventListener('click', () => action.run(row))
    buttons.append(button)
  }
  return row
}

class RecentList {
  constructor (recent, list, empty, { onDeleted = () => {} } = {}) {
    this.recent = recent
    this.list = list
    this.empty = empty
    this.onDeleted = onDeleted
    this.query = ''
    this.renaming = null
  }

  render () {
    if (this.renaming !== null) return // keep the field someone is typing in
    const all = this.recent.list()
    const shown = matching(all, this.query, displayName)
    this.list.replaceChildren(...shown.map(entry => this._row(entry)))
    this.empty.hidden = shown.length > 0
    this.empty.textContent = all.length === 0
      ? 'Documents you open in this browser appear here.'
      : `No document here matches “${this.query.trim()}”.`
  }

  _row (entry) {
    const unsaved = unsavedCount(entry.room)
    return documentRow({
      room: entry.room,
      title: entry.title,
      note: unsaved === 0 ? null : unsaved === 1 ? '1 edit not yet on the server' : `${unsaved} edits not yet on the server`,
      time: entry.opened,
      timeLabel: 'Opened',
      actions: [
        { name: 'rename', label: 'Rename', icon: ICONS.rename, run: (row) => this._rename(row, entry) },
        { name: 'remove', label: 'Remove from this list', icon: ICONS.remove, run: () => this._remove(entry) },
        { name: 'delete', label: 'Delete', icon: ICONS.delete, run: () => this._delete(entry) }
      ]
    })
  }

  _remove (entry) {
    this.recent.remove(entry.room)
    this.render()
    const title = entry.title.trim() || displayName(entry.room)
    showToast(`Removed “${title}” from this list`, {
      action: { label: 'Undo', run: () => { this.recent.restore(entry); this.render() } }
    })
  }

  async _delete (entry) {
    if (!await confirmAndDelete(entry.room, entry.title)) return
    this.recent.remove(entry.room)
    this.render()
    this.onDeleted(entry.room)
  }

  _rename (row, entry) {
    this.renaming = entry.room
    editRowTitle(row, entry.title, {
      onStart: (title) => this.recent.retitled(entry.room, title),
      done: () => { this.renaming = null; this.render() }
    })
  }
}

/** Every document on the server (GET api/docs), when the server lists them to this browser:
 * a page at a time ("Show more"), searched by title or name on the server. */
class ServerList {
  constructor ({ section, list, empty, more, recent, onDeleted = () => {} }) {
    Object.assign(this, { section, list, empty, more, recent, onDeleted })
    this.query = ''
    this.entries = []
    this.next = null
    this.asked = 0
    this.renaming = null
    this.problem = null
    this.more.addEventListener('click', () => this.load(false))
  }

  /** Load the first page (reset) or the next one; a slower answer to an older question is dropped. */
  async load (reset = true) {
    const asked = ++this.asked
    const after = reset ? null : this.next
    this.more.disabled = true
    let response = null
    try {
      response = await fetch(apiUrl(listingPath({ after, query: this.query })), { cache: 'no-store' })
    } catch {}
    if (asked !== this.asked) return
    this.more.disabled = false
    if (response === null || !response.ok) {
      const problem = response === null ? 'The server’s documents are listed here when it can be reached.' : listingProblem(response.status)
      this.section.hidden = problem === null
      if (reset) this.entries = []
      this.next = null
      this.problem = problem
      this._render()
      return
    }
    const page = parseListing(await response.json().catch(() => null))
    if (asked !== this.asked) return
    this.entries = reset ? page.documents : [...this.entries, ...page.documents]
    this.next = page.next
    this.problem = null
    this.section.hidden = false
    this._render()
  }

  search (query) {
    this.query = query
    clearTimeout(this.searchTimer)
    this.searchTimer = setTimeout(() => this.load(true), SEARCH_DELAY_MS)
  }

  forget (room) {
    this.entries = this.entries.filter(e => e.room !== room)
    this._render()
  }

  _render () {
    const problem = this.problem
    if (this.renaming !== null) return
    this.list.replaceChildren(...this.entries.map(entry => this._row(entry)))
    this.more.hidden = this.next === null
    this.empty.hidden = this.entries.length > 0 && problem === null
    this.empty.textContent = problem ?? (this.query.trim()
      ? `No document on the server matches “${this.query.trim()}”.`
      : 'The server has no documents yet.')
    this.section.dataset.state = problem === null ? 'listed' : 'problem'
  }

  _row (entry) {
    const row = documentRow({
      room: entry.room,
      title: entry.title,
      time: entry.changed,
      timeLabel: 'Changed',
      actions: [
        { name: 'rename', label: 'Rename', icon: ICONS.rename, run: (row) => this._rename(row, entry) },
        { name: 'delete', label: 'Delete', icon: ICONS.delete, run: () => this._delete(entry) }
      ]
    })
    row.querySelector('.row-meta').textContent = `${displayName(entry.room)} · ${formatSize(entry.size)}`
    return row
  }

  _rename (row, entry) {
    this.renaming = entry.room
    editRowTitle(row, entry.title, {
      onStart: (title) => this.recent.retitled(entry.room, title),
      done: (title) => {
        this.renaming = null
        if (title !== null) entry.title = title
        this._render()
      }
    })
  }

  async _delete (entry) {
    if (!await confirmAndDelete(entry.room, entry.title)) return
    this.recent.remove(entry.room)
    this.forget(entry.room)
    this.onDeleted(entry.room)
  }
}

/** Dropping a file anywhere on the page makes it a new document. */
const acceptDrops = (overlay) => {
  let depth = 0
  const hasFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes('Files')
  window.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return
    depth++
    overlay.hidden = false
  })
  window.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1)
    if (depth === 0) overlay.hidden = true
  })
  window.addEventListener('dragover', (event) => {
    if (hasFiles(event)) event.preventDefault()
  })
  window.addEventListener('drop', (event) => {
    if (!hasFiles(event)) return
    event.preventDefault()
    depth = 0
    overlay.hidden = true
    importFiles(event.dataTransfer)
  })
}

export const startHome = async () => {
  document.title = 'Documents · collab'
  const recent = new RecentDocuments()
  let server = null
  const list = new RecentList(recent, $('recent'), $('recent-empty'), { onDeleted: (room) => server.forget(room) })
  server = new ServerList({
    section: $('server-section'), list: $('server-docs'), empty: $('server-empty'), more: $('server-more'),
    recent, onDeleted: () => list.render()
  })
  list.render()
  const listed = server.load(true)
  recent.onChange(() => list.render())
  // Times read "5 minutes ago": keep them true while the page stays open.
  setInterval(() => { list.render(); server._render() }, 60_000)
  $('search').addEventListener('input', () => {
    list.query = $('search').value
    list.render()
    server.search($('search').value)
  })
  $('new-doc').addEventListener('click', newDocument)
  $('open-file').addEventListener('click', () => $('home-file').click())
  $('home-file').addEventListener('change', () => importFiles($('home-file')))
  acceptDrops($('drop-overlay'))
  window.collabHome = { recent, list, server, listed }
}
