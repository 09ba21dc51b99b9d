// Version history of a document: the versions the server keeps (GET api/docs/<room>/versions:
// after each burst of editing, every few minutes while editing goes on, and named ones), one of
// them shown beside the current text with the differences marked, and restored as an ordinary
// edit of the text: everyone receives it, nothing is lost, and undo takes it back.

import { diffLines, editsBetween, countChanges } from './diff.js'
import { $, el, showToast, timeAgo, fullTime } from './ui.js'
import { apiUrl } from './urls.js'

const PAGE = 50

/** How a version is named: its label, else when it was kept. */
export const versionTitle = (version) => version.label || fullTime(Date.parse(version.at))

/** "Ada, Bob and 2 others", or '' for nobody known. */
export const authorsLine = (authors) => {
  if (authors.length === 0) return ''
  if (authors.length <= 2) return authors.join(' and ')
  if (authors.length === 3) return `${authors[0]}, ${authors[1]} and ${authors[2]}`
  return `${authors[0]}, ${authors[1]} and ${authors.length - 2} others`
}

export class History {
  /**
   * @param {{room: string, tokens: import('./access.js').Tokens, ytext: import('yjs').Text,
   *   undoManager: import('yjs').UndoManager, mayWrite: () => boolean, onToggle: (open: boolean) => void}} options
   */
  constructor ({ room, tokens, ytext, undoManager, mayWrite, onToggle = () => {} }) {
    Object.assign(this, { room, tokens, ytext, undoManager, mayWrite, onToggle })
    this.workspace = $('workspace')
    this.versions = []
    this.next = null
    this.shown = null
    this._refresh = () => { if (this.shown !== null) this._renderDiff() }
    $('history-close').addEventListener('click', () => this.close())
    $('history-more').addEventListener('click', () => this.load(false))
    $('version-close').addEventListener('click', () => this.hideVersion())
    $('version-restore').addEventListener('click', () => this.restore())
    $('version-name').addEventListener('click', () => this.name())
    $('version-label').addEventListener('keydown', (event) => {
      if (event.key === 'Enter') { event.preventDefault(); this.name() }
    })
  }

  get isOpen () {
    return !$('history').hidden
  }

  async open () {
    $('history').hidden = false
    this.workspace.dataset.history = 'list'
    this.onToggle(true)
    $('version-name-form').hidden = !this.mayWrite()
    await this.load(true)
  }

  close () {
    this.hideVersion()
    $('history').hidden = true
    delete this.workspace.dataset.history
    this.onToggle(false)
  }

  _headers () {
    return this.tokens.headers(this.room)
  }

  async load (reset = true) {
    const params = new URLSearchParams({ limit: String(PAGE) })
    if (!reset && this.next !== null) params.set('before', String(this.next))
    let answer = null
    try {
      const response = await fetch(apiUrl(`api/docs/${this.room}/versions?${params}`), { cache: 'no-store', headers: this._headers() })
      if (response.ok) answer = await response.json()
    } catch {}
    if (answer === null) {
      $('history-empty').hidden = false
      $('history-empty').textContent = 'The history is on the server: it shows once connected.'
      return
    }
    this.versions = reset ? answer.versions : [...this.versions, ...answer.versions]
    this.next = answer.next
    this._renderList()
  }

  _renderList () {
    const list = $('version-list')
    list.replaceChildren(...this.versions.map(version => {
      const by = authorsLine(version.authors)
      const item = el('li', { class: 'version-row', dataset: { id: String(version.id), kind: version.kind } },
        el('button', { type: 'button', class: 'version-item', title: fullTime(Date.parse(version.at)) },
          el('span', { class: 'version-title' }, versionTitle(version)),
          el('span', { class: 'version-meta' }, [timeAgo(Date.parse(version.at)), by].filter(Boolean).join(' · '))))
      if (this.shown?.id === version.id) item.classList.add('selected')
      item.querySelector('button').addEventListener('click', () => this.show(version.id))
      return item
    }))
    $('history-empty').hidden = this.versions.length > 0
    $('history-empty').textContent = 'No versions yet: one is kept after each burst of editing.'
    $('history-more').hidden = this.next === null
  }

  /** Keep the document as it is now, under a name. */
  async name () {
    const field = $('version-label')
    const label = field.value.trim()
    if (!label) { field.focus(); return }
    let ok = false
    try {
      const response = await fetch(apiUrl(`api/docs/${this.room}/versions`), {
        method: 'POST', cache: 'no-store', headers: { 'Content-Type': 'application/json', ...this._headers() },
        body: JSON.stringify({ label })
      })
      ok = response.ok
    } catch {}
    if (!ok) {
      showToast('The server did not keep the version; try again once connected.')
      return
    }
    field.value = ''
    showToast(`Kept this version as “${label}”`)
    await this.load(true)
  }

  /** Show one version beside the current text, the differences marked. */
  async show (id) {
    let version = null
    try {
      const response = await fetch(apiUrl(`api/docs/${this.room}/versions/${id}`), { cache: 'no-store', headers: this._headers() })
      if (response.ok) version = await response.json()
    } catch {}
    if (version === null) {
      showToast('This version could not be read; try again once connected.')
      return
    }
    if (this.shown === null) this.ytext.observe(this._refresh)
    this.shown = version
    this.workspace.dataset.history = 'version'
    $('version-restore').hidden = !this.mayWrite()
    $('version-heading').textContent = versionTitle(version)
    const by = authorsLine(version.authors)
    $('version-when').textContent = [version.label ? fullTime(Date.parse(version.at)) : timeAgo(Date.parse(version.at)),
      by ? `edited by ${by}` : '', version.kind === 'named' ? 'named version' : ''].filter(Boolean).join(' · ')
    this._renderList()
    this._renderDiff()
  }

  hideVersion () {
    if (this.shown !== null) this.ytext.unobserve(this._refresh)
    this.shown = null
    if (!$('history').hidden) this.workspace.dataset.history = 'list'
    for (const row of document.querySelectorAll('.version-row.selected')) row.classList.remove('selected')
  }

  /** The version's text, with what the current text lacks and what it has in addition marked. */
  _renderDiff () {
    const parts = diffLines(this.shown.text, this.ytext.toString())
    const { added, removed } = countChanges(parts)
    $('version-summary').textContent = added === 0 && removed === 0
      ? 'The same text as now.'
      : `Since then: ${added} line${added === 1 ? '' : 's'} added, ${removed} removed.`
    $('version-diff').replaceChildren(...parts.flatMap(part => part.lines.map(line =>
      el('div', { class: `diff-line ${part.kind}`, dataset: { kind: part.kind } },
        el('span', { class: 'diff-mark', 'aria-hidden': 'true' }, part.kind === 'removed' ? '−' : part.kind === 'added' ? '+' : ''),
        el('span', { class: 'diff-text' }, line.replace(/\n$/, '') || '\u00a0')))))
  }

  /** Make the text what it was in the shown version: one edit, which undo takes back. */
  restore () {
    const version = this.shown
    if (version === null || !this.mayWrite()) return
    const edits = editsBetween(this.ytext.toString(), version.text)
    if (edits.length === 0) {
      showToast('The text is already as in this version')
      return
    }
    this.undoManager.stopCapturing()
    this.ytext.doc.transact(() => {
      for (const { index, remove, insert } of edits) {
        if (remove > 0) this.ytext.delete(index, remove)
        if (insert) this.ytext.insert(index, insert)
      }
    })
    this.undoManager.stopCapturing()
    showToast(`Restored the version of ${fullTime(Date.parse(version.at))}`, {
      action: { label: 'Undo', run: () => this.undoManager.undo() },
      ms: 4000
    })
  }
}
