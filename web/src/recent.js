// The documents this browser has opened, most recent first, kept in localStorage so that the
// home page can list them without asking the server (and while offline). Each entry is
// {room, title, opened}: the raw room name, the last title this browser saw, and when it was
// last opened (ms since the epoch). Removing an entry forgets it here only: the document and
// this browser's copy of it stay.

const KEY = 'collab:recent'
export const RECENT_LIMIT = 200

const isEntry = (e) => e !== null && typeof e === 'object' && typeof e.room === 'string' && e.room !== '' &&
  typeof e.title === 'string' && Number.isFinite(e.opened)

/** The list stored as `raw` (anything unreadable counts as empty). */
export const parseRecent = (raw) => {
  try {
    const list = JSON.parse(raw ?? '[]')
    return Array.isArray(list) ? list.filter(isEntry) : []
  } catch {
    return []
  }
}

const ordered = (list) => [...list].sort((a, b) => b.opened - a.opened).slice(0, RECENT_LIMIT)

/** `list` with `room` opened at `now` (moved to the front, its title kept unless given). */
export const withOpened = (list, room, now, title) => {
  const old = list.find(e => e.room === room)
  const entry = { room, title: title ?? old?.title ?? '', opened: now }
  return ordered([entry, ...list.filter(e => e.room !== room)])
}

/** `list` with the title of `room` changed, in place (renaming is not opening). */
export const withTitle = (list, room, title) =>
  list.map(e => (e.room === room ? { ...e, title } : e))

export const without = (list, room) => list.filter(e => e.room !== room)

const fold = (s) => s.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase()

/** The entries whose title or name contains `query` (case and accents ignored). */
export const matching = (list, query, displayName = (room) => room) => {
  const q = fold(query.trim())
  if (!q) return list
  return list.filter(e => fold(e.title).includes(q) || fold(displayName(e.room)).includes(q))
}

export class RecentDocuments {
  constructor (storage = localStorage) {
    this.storage = storage
  }

  list () {
    return parseRecent(this.storage.getItem(KEY))
  }

  _save (list) {
    try {
      this.storage.setItem(KEY, JSON.stringify(list))
    } catch (err) {
      console.warn('collab: could not remember the list of documents', err)
    }
  }

  opened (room, title) {
    this._save(withOpened(this.list(), room, Date.now(), title))
  }

  retitled (room, title) {
    const list = this.list()
    if (list.some(e => e.room === room && e.title !== title)) this._save(withTitle(list, room, title))
  }

  remove (room) {
    this._save(without(this.list(), room))
  }

  /** Put back an entry removed by mistake. */
  restore (entry) {
    this._save(ordered([entry, ...without(this.list(), entry.room)]))
  }

  /** Calls `fn` when another tab changes the list. */
  onChange (fn) {
    window.addEventListener('storage', (event) => {
      if (event.key === KEY || event.key === null) fn()
    })
  }
}
