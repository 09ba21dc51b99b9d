// The home page: start a document (blank, or from a .md / .txt file chosen or dropped anywhere
// on the page), and find the documents this browser has opened, most recent first, to open,
// rename or take off the list. It works offline: the list lives in this browser.

import { DocumentSession, unsavedCount } from './documents.js'
import { RecentDocuments, matching } from './recent.js'
import { TITLE_MAX } from './title.js'
import { $, el, showToast, timeAgo, fullTime, displayName } from './ui.js'
import { documentHref } from './urls.js'
import { newDocument, importFiles } from './start.js'

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

const ICONS = {
  rename: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 20h4L19 9l-4-4L4 16z"/><path d="m13.5 6.5 4 4"/></svg>',
  remove: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6 6 18"/></svg>'
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
  constructor (recent, list, empty) {
    this.recent = recent
    this.list = list
    this.empty = empty
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
    const row = documentRow({
      room: entry.room,
      title: entry.title,
      note: unsaved === 0 ? null : unsaved === 1 ? '1 edit not yet on the server' : `${unsaved} edits not yet on the server`,
      time: entry.opened,
      timeLabel: 'Opened',
      actions: [
        { name: 'rename', label: 'Rename', icon: ICONS.rename, run: (row) => this._startRename(row, entry) },
        { name: 'remove', label: 'Remove from this list', icon: ICONS.remove, run: () => this._remove(entry) }
      ]
    })
    return row
  }

  _remove (entry) {
    this.recent.remove(entry.room)
    this.render()
    const title = entry.title.trim() || displayName(entry.room)
    showToast(`Removed “${title}” from this list`, {
      action: { label: 'Undo', run: () => { this.recent.restore(entry); this.render() } }
    })
  }

  _startRename (row, entry) {
    const field = el('input', {
      class: 'rename-field', type: 'text', value: entry.title, maxlength: String(TITLE_MAX),
      placeholder: 'Untitled document', 'aria-label': 'New title', spellcheck: 'false'
    })
    const titleNode = row.querySelector('.row-title')
    titleNode.replaceWith(field)
    row.classList.add('renaming')
    this.renaming = entry.room
    field.focus()
    field.select()
    let done = false
    const finish = async (commit) => {
      if (done) return
      done = true
      const title = field.value.replace(/\s+/g, ' ').trim()
      if (!commit || title === entry.title.trim()) {
        this.renaming = null
        this.render()
        return
      }
      field.disabled = true
      row.classList.add('busy')
      this.recent.retitled(entry.room, title)
      let stored = false
      try {
        stored = await renameDocument(entry.room, title)
      } catch (err) {
        console.warn('collab: rename failed', err)
      }
      this.renaming = null
      this.render()
      showToast(stored ? `Renamed to “${title}”` : `Renamed in this browser; the server gets it when the document is next opened online`)
    }
    field.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') { event.preventDefault(); finish(true) }
      if (event.key === 'Escape') { event.preventDefault(); finish(false) }
    })
    field.addEventListener('blur', () => finish(true))
    // A click on the row's link while renaming should not open the document.
    row.querySelector('.doc-link').addEventListener('click', (event) => { if (!done) event.preventDefault() }, { once: true })
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
  const list = new RecentList(recent, $('recent'), $('recent-empty'))
  list.render()
  recent.onChange(() => list.render())
  // Times read "5 minutes ago": keep them true while the page stays open.
  setInterval(() => list.render(), 60_000)
  $('search').addEventListener('input', () => {
    list.query = $('search').value
    list.render()
  })
  $('new-doc').addEventListener('click', newDocument)
  $('open-file').addEventListener('click', () => $('home-file').click())
  $('home-file').addEventListener('change', () => importFiles($('home-file')))
  acceptDrops($('drop-overlay'))
  window.collabHome = { recent, list }
}
