// The document page: one document, its editor and preview, and a header that tells the truth
// about it (connection, "Saved" only once the server has stored every edit, who is here).

import { removeAwarenessStates } from 'y-protocols/awareness'

import { DocumentSession } from './documents.js'
import { Editor } from './editor.js'
import { Preview, linkScrolling } from './preview.js'
import { People } from './people.js'
import { bindTitle, TITLE_MAX } from './title.js'
import { describeCounts } from './counts.js'
import { download } from './files.js'
import { RecentDocuments } from './recent.js'
import { randomPersonName, randomColour, lightColour, COLOURS, documentNameProblem } from './names.js'
import { $, el, popover, placeResponsively, displayName } from './ui.js'
import { homeHref } from './urls.js'
import { newDocument, importFiles } from './start.js'
import { Tokens, tokenInUrl, withoutToken, modeOf } from './access.js'
import { SharePanel } from './share.js'
import { History } from './history.js'
import { confirmAndDelete } from './home.js'

const NAME_KEY = 'collab:name'
const COLOUR_KEY = 'collab:colour'
const VIEW_KEY = 'collab:view'
const SOURCE_KEY = 'collab:source-view'
const NARROW = '(max-width: 720px)'
const COMPACT = '(max-width: 1080px)'
const COUNT_DELAY_MS = 120

const loadIdentity = () => {
  let name = localStorage.getItem(NAME_KEY)
  if (!name) {
    name = randomPersonName()
    localStorage.setItem(NAME_KEY, name)
  }
  let colour = localStorage.getItem(COLOUR_KEY)
  if (!colour || !COLOURS.includes(colour)) {
    colour = randomColour()
    localStorage.setItem(COLOUR_KEY, colour)
  }
  return { name, colour }
}

// --- header -------------------------------------------------------------------------------------

const renderConnection = (status) => {
  const node = $('connection')
  const label = node.querySelector('.label')
  node.dataset.state = status.state
  node.dataset.transport = status.transport || ''
  $('retry').hidden = status.state !== 'waiting'
  if (status.state === 'connected') label.textContent = status.transport === 'poll' ? 'Connected (HTTP fallback)' : 'Connected'
  else if (status.state === 'connecting') label.textContent = 'Connecting…'
  else if (status.state === 'offline') label.textContent = 'Offline — edits are kept'
  else if (status.state === 'ended') label.textContent = status.code === 4410 ? 'Deleted' : 'No access'
  else if (status.state === 'waiting') {
    const seconds = Math.max(1, Math.ceil((status.retryAt - Date.now()) / 1000))
    label.textContent = `Reconnecting in ${seconds} s`
  } else label.textContent = 'Disconnected'
  node.title = label.textContent
}

const renderSaved = (unsaved) => {
  const node = $('saved')
  const label = node.querySelector('.label')
  node.dataset.state = unsaved === 0 ? 'saved' : 'unsaved'
  node.dataset.count = String(unsaved)
  label.textContent = unsaved === 0 ? 'Saved' : `Unsaved changes (${unsaved})`
  node.title = unsaved === 0
    ? 'Every edit made here is stored on the server'
    : 'Kept in this browser; stored on the server once it confirms them'
}

/** Two people in one colour cannot be told apart: whoever joined later (higher client id) takes
 * a free colour for this visit (the remembered one stays for next time). */
const avoidColourClash = (awareness, identity, setUser) => {
  const mine = awareness.getLocalState()?.user?.color
  const taken = new Set()
  let clash = false
  awareness.getStates().forEach((state, clientId) => {
    if (clientId === awareness.clientID || !state?.user?.color) return
    taken.add(state.user.color)
    if (state.user.color === mine && clientId < awareness.clientID) clash = true
  })
  if (!clash) return
  const free = COLOURS.filter(c => !taken.has(c))
  if (free.length > 0) setUser({ name: identity.name, colour: free[awareness.clientID % free.length] })
}

/** A link the server would refuse: say why and offer a new document, rather than reconnect forever. */
const showUnusableName = (problem) => {
  const connection = $('connection')
  connection.dataset.state = 'error'
  connection.querySelector('.label').textContent = 'Not opened'
  for (const id of ['saved', 'copy-link', 'people', 'menu-button', 'view-mode', 'me', 'doc-title', 'counts']) {
    $(id).hidden = true
  }
  const start = el('button', { class: 'button primary', type: 'button' }, 'Start a new document')
  start.addEventListener('click', newDocument)
  $('workspace').replaceChildren(el('div', { class: 'notice', role: 'alert' },
    el('h2', {}, 'This link cannot open a document'),
    el('p', {}, `The server refuses this document because ${problem}.`),
    el('div', { class: 'notice-actions' }, start, el('a', { class: 'button', href: homeHref() }, 'Your documents'))))
}

/** What the page says when the server closed it for good (provider.js: isFinalClose). */
export const endedNotice = (code) => code === 4410
  ? { title: 'This document was deleted',
      text: 'Someone deleted it on the server, so changes made here go nowhere. This browser still has the text it held: download it to keep it.' }
  : code === 4401
    ? { title: 'This link no longer gives access',
        text: 'The link has expired or is not valid. Ask whoever shared it for a new one; the text this browser holds can still be downloaded.' }
    : { title: 'This link is not for this document',
        text: 'The server refused access to this document. Ask whoever shared it for a link to it.' }

/** The server closed the document for good: say why, stop editing, offer this browser's copy. */
const showEnded = ({ code }, { editor, room, saveCopy }) => {
  const notice = endedNotice(code)
  editor.setWritable(false)
  $('doc-title').disabled = true
  for (const id of ['saved', 'read-only', 'copy-link', 'delete-doc']) $(id).hidden = true
  if (code === 4410) new RecentDocuments().remove(room)
  const keep = el('button', { class: 'button', type: 'button' }, 'Download this copy (.md)')
  keep.addEventListener('click', saveCopy)
  const banner = el('div', { id: 'ended', class: 'banner', role: 'alert', dataset: { code: String(code) } },
    el('div', { class: 'banner-text' }, el('strong', {}, notice.title), el('span', {}, notice.text)),
    el('div', { class: 'banner-actions' }, keep, el('a', { class: 'button primary', href: homeHref() }, 'Your documents')))
  $('workspace').before(banner)
}

// --- views: edit, split, preview ------------------------------------------------------------------

const MODES = ['edit', 'split', 'preview']

const setupViews = (editor, preview) => {
  const workspace = $('workspace')
  const narrow = window.matchMedia(NARROW)
  let chosen = MODES.includes(localStorage.getItem(VIEW_KEY)) ? localStorage.getItem(VIEW_KEY) : 'edit'
  const effective = () => (narrow.matches && chosen === 'split' ? 'edit' : chosen)
  const apply = () => {
    const mode = effective()
    workspace.dataset.mode = mode
    for (const button of $('view-mode').querySelectorAll('button')) {
      button.setAttribute('aria-checked', String(button.dataset.mode === mode))
    }
    if (mode !== 'edit') preview.render()
    editor.view.requestMeasure()
  }
  $('view-mode').addEventListener('click', (event) => {
    const button = event.target.closest('button[data-mode]')
    if (!button) return
    chosen = button.dataset.mode
    localStorage.setItem(VIEW_KEY, chosen)
    apply()
  })
  narrow.addEventListener('change', apply)
  apply()
  return { mode: effective }
}

// --- start --------------------------------------------------------------------------------------

export const startEditor = async (room) => {
  const name = displayName(room)
  document.title = `${name} · collab`
  $('doc-title').placeholder = 'Untitled document'
  $('doc-title').title = `Document title (the link names it ${name})`
  placeResponsively($('me'), $('me-slot-wide'), $('me-slot-narrow'), COMPACT)
  placeResponsively($('view-mode'), $('view-slot-wide'), $('view-slot-narrow'), NARROW)
  placeResponsively($('copy-link'), $('share-slot-wide'), $('share-slot-narrow'), NARROW)
  const problem = documentNameProblem(room)
  if (problem !== null) {
    showUnusableName(problem)
    return
  }

  // A share link's token: kept for this document, and taken out of the address bar (the
  // address stays a plain link to the document; Share makes links for others).
  const tokens = new Tokens()
  const linked = tokenInUrl(location.href)
  if (linked !== null) {
    tokens.set(room, linked)
    history.replaceState(history.state, '', withoutToken(location.href))
  }

  const session = new DocumentSession(room)
  const { doc, text, title, awareness, confirmations } = session
  const identity = loadIdentity()
  let sessionColour = identity.colour
  const setUser = ({ name, colour = sessionColour }) => {
    sessionColour = colour
    awareness.setLocalStateField('user', { name, color: colour, colorLight: lightColour(colour) })
    $('me-colour').style.backgroundColor = colour
  }
  setUser(identity)
  confirmations.onChange(renderSaved)
  await session.load()

  const recent = new RecentDocuments()
  const showTitle = (value) => {
    const shown = value.trim()
    document.title = `${shown || name} · collab`
    recent.retitled(room, value)
  }
  recent.opened(room, title.toString())
  $('doc-title').maxLength = TITLE_MAX
  bindTitle(title, $('doc-title'), showTitle)
  showTitle(title.toString())

  const source = localStorage.getItem(SOURCE_KEY) === '1'
  $('source-view').checked = source
  let countTimer = null
  const editor = new Editor($('editor'), text, awareness, {
    source,
    onChange: () => {
      clearTimeout(countTimer)
      countTimer = setTimeout(() => { $('counts').textContent = describeCounts(text.toString(), editor.selectedText()) }, COUNT_DELAY_MS)
    }
  })
  $('counts').textContent = describeCounts(text.toString())
  let views = null
  const preview = new Preview(text, $('preview'), () => views !== null && views.mode() !== 'edit')
  views = setupViews(editor, preview)
  linkScrolling(editor.view, $('editor-pane'), $('preview-pane'), $('preview'), () => views.mode() === 'split')

  const provider = session.connect()
  provider.on('status', renderConnection)
  renderConnection(provider.status)
  provider.on('ended', (info) => showEnded(info, {
    editor, room, saveCopy: () => download(text.toString(), title.toString().trim() || name, 'md')
  }))
  setInterval(() => { if (provider.status.state === 'waiting') renderConnection(provider.status) }, 250)
  awareness.on('change', () => avoidColourClash(awareness, identity, setUser))
  const people = new People({
    awareness,
    ytext: text,
    view: editor.view,
    button: $('people'),
    panel: $('people-panel'),
    list: $('people-list'),
    maxShown: () => (window.matchMedia(NARROW).matches ? 3 : 5)
  })

  const nameInput = $('me-name')
  nameInput.value = identity.name
  const commitName = () => {
    const name = nameInput.value.trim().slice(0, 40) || identity.name
    nameInput.value = name
    identity.name = name
    localStorage.setItem(NAME_KEY, name)
    setUser({ name })
  }
  nameInput.addEventListener('change', commitName)
  nameInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); commitName(); editor.view.focus() }
    if (e.key === 'Escape') { nameInput.value = identity.name; editor.view.focus() }
  })
  $('doc-title').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === 'Escape') { e.preventDefault(); editor.view.focus() }
  })
  const share = new SharePanel({ room, tokens, title: () => title.toString() })
  // Read-only (a read-only link, or the server says so): the text and the title cannot be
  // changed here, and the page says so; presence still goes both ways.
  let readOnly = false
  const becomeReadOnly = () => {
    if (readOnly) return
    readOnly = true
    editor.setWritable(false)
    $('doc-title').readOnly = true
    $('read-only').hidden = provider.ended !== null
    $('saved').hidden = true
    $('copy-link').hidden = true // sharing needs write access
    $('delete-doc').hidden = true
    document.documentElement.dataset.access = 'read'
  }
  if (modeOf(tokens.get(room)) === 'read') becomeReadOnly()
  provider.on('denied', ({ reason }) => { if (reason === 'read-only') becomeReadOnly() })
  $('retry').addEventListener('click', () => provider.retryNow())

  const versions = new History({
    room, tokens, ytext: text, undoManager: editor.undoManager, mayWrite: () => !readOnly && provider.ended === null
  })
  const menu = popover($('menu-button'), $('menu'))
  const fileTitle = () => title.toString().trim() || name
  const actions = {
    'download-md': () => download(text.toString(), fileTitle(), 'md'),
    'download-txt': () => download(text.toString(), fileTitle(), 'txt'),
    history: () => (versions.isOpen ? versions.close() : versions.open()),
    delete: () => confirmAndDelete(room, title.toString()),
    new: () => newDocument(),
    import: () => $('import-file').click()
  }
  $('menu').addEventListener('click', (event) => {
    const item = event.target.closest('[data-action]')
    if (!item) return
    menu.close()
    actions[item.dataset.action]()
  })
  $('source-view').addEventListener('change', () => {
    localStorage.setItem(SOURCE_KEY, $('source-view').checked ? '1' : '0')
    editor.setSource($('source-view').checked)
  })
  $('import-file').addEventListener('change', () => importFiles($('import-file')))

  window.addEventListener('beforeunload', (e) => {
    if (confirmations.unsaved > 0) {
      e.preventDefault()
      e.returnValue = ''
    }
  })
  window.addEventListener('pagehide', () => {
    confirmations.stash()
    removeAwarenessStates(awareness, [doc.clientID], 'window unload')
  })
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') confirmations.stash()
  })

  editor.view.focus()
  // A handle for tests and for the curious; nothing in the page depends on it.
  window.collab = { room, doc, ytext: text, title, awareness, provider, confirmations, view: editor.view, people, preview, share, history: versions, readOnly: () => readOnly }
}
