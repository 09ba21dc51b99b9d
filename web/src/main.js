// The page: one document, its editor, and the header that tells the truth about it.

import * as Y from 'yjs'
import { Awareness, removeAwarenessStates } from 'y-protocols/awareness'
import { IndexeddbPersistence } from 'y-indexeddb'
import { EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter,
  drawSelection, dropCursor, highlightSpecialChars, placeholder, rectangularSelection } from '@codemirror/view'
import { EditorState } from '@codemirror/state'
import { defaultKeymap, indentWithTab } from '@codemirror/commands'
import { searchKeymap, highlightSelectionMatches } from '@codemirror/search'
import { yCollab, yUndoManagerKeymap, yRemoteSelections as stockSelections,
  yRemoteSelectionsTheme as stockSelectionsTheme } from 'y-codemirror.next'

import { SyncProvider, WebSocketTransport } from './provider.js'
import { Confirmations } from './confirm.js'
import { yRemoteSelections, yRemoteSelectionsTheme } from './remote-selections.js'
import { randomDocumentName, randomPersonName, randomColour, lightColour, initials, COLOURS,
  documentNameProblem } from './names.js'
import './style.css'

const TEXT_FIELD = 'text'
const NAME_KEY = 'collab:name'
const COLOUR_KEY = 'collab:colour'
const IDB_TIMEOUT_MS = 3000

const $ = (id) => document.getElementById(id)

/** The room is the raw path segment after /d/, exactly as the server sees it in /ws/<room>. */
const roomFromLocation = () => {
  const match = /^\/d\/(.+)$/.exec(location.pathname)
  if (match) return match[1]
  const room = randomDocumentName()
  history.replaceState(null, '', `/d/${room}`)
  return room
}

const displayName = (room) => {
  try {
    return decodeURIComponent(room)
  } catch {
    return room
  }
}

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

/** Resolves when IndexedDB has loaded, or after a timeout (private windows may refuse it). */
const loaded = (persistence) => Promise.race([
  persistence.whenSynced,
  new Promise(resolve => setTimeout(resolve, IDB_TIMEOUT_MS))
])

const socketUrl = (room) => {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${scheme}//${location.host}/ws/${room}?acks=1` // durable acks drive the saved status
}

const buildEditor = (ytext, awareness) => {
  const undoManager = new Y.UndoManager(ytext)
  const theme = EditorView.theme({
    '&': { height: '100%', backgroundColor: 'var(--sheet)', color: 'var(--ink)' },
    '.cm-scroller': { fontFamily: 'var(--mono)', lineHeight: '1.65', overflow: 'auto' },
    '.cm-content': { padding: '18px 0 40vh', caretColor: 'var(--accent)' },
    '.cm-line': { padding: '0 28px 0 14px' },
    '.cm-gutters': {
      backgroundColor: 'var(--sheet)', color: 'var(--faint)', border: 'none', paddingLeft: '10px'
    },
    '.cm-activeLine': { backgroundColor: 'var(--active-line)' },
    '.cm-activeLineGutter': { backgroundColor: 'transparent', color: 'var(--muted)' },
    '&.cm-focused': { outline: 'none' },
    '&.cm-focused .cm-cursor': { borderLeftColor: 'var(--accent)', borderLeftWidth: '2px' },
    '.cm-selectionBackground, &.cm-focused .cm-selectionBackground, ::selection': {
      backgroundColor: 'var(--selection) !important'
    },
    '.cm-placeholder': { color: 'var(--faint)', fontStyle: 'normal' },
    '.cm-ySelectionInfo': {
      fontFamily: 'var(--sans)', fontSize: '11px', fontWeight: '600', padding: '1px 5px',
      borderRadius: '4px 4px 4px 0', top: '-1.35em', opacity: '1', letterSpacing: '0.01em'
    },
    '.cm-panels': { backgroundColor: 'var(--chrome)', color: 'var(--ink)' }
  })
  return new EditorView({
    parent: $('editor'),
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightActiveLine(),
        highlightSpecialChars(),
        drawSelection(),
        dropCursor(),
        rectangularSelection(),
        highlightSelectionMatches(),
        EditorView.lineWrapping,
        EditorState.allowMultipleSelections.of(true),
        placeholder('Start typing. Everyone with the link edits this document with you.'),
        keymap.of([...yUndoManagerKeymap, ...searchKeymap, ...defaultKeymap, indentWithTab]),
        yCollab(ytext, awareness, { undoManager })
          .filter(ext => ext !== stockSelections && ext !== stockSelectionsTheme),
        yRemoteSelectionsTheme,
        yRemoteSelections,
        theme
      ]
    })
  })
}

// --- header -----------------------------------------------------------------------------------

const showToast = (() => {
  let timer = null
  return (message) => {
    const toast = $('toast')
    toast.textContent = message
    toast.hidden = false
    clearTimeout(timer)
    timer = setTimeout(() => { toast.hidden = true }, 1800)
  }
})()

const copyLink = async () => {
  const url = location.href
  try {
    await navigator.clipboard.writeText(url)
    showToast('Link copied')
  } catch {
    // Clipboard API refused (insecure origin or no permission): select the link instead.
    window.prompt('Copy this link', url)
  }
}

const renderConnection = (status) => {
  const el = $('connection')
  const label = el.querySelector('.label')
  const retry = $('retry')
  el.dataset.state = status.state
  retry.hidden = status.state !== 'waiting'
  if (status.state === 'connected') label.textContent = 'Connected'
  else if (status.state === 'connecting') label.textContent = 'Connecting…'
  else if (status.state === 'offline') label.textContent = 'Offline — edits are kept'
  else if (status.state === 'waiting') {
    const seconds = Math.max(1, Math.ceil((status.retryAt - Date.now()) / 1000))
    label.textContent = `Reconnecting in ${seconds} s`
  } else label.textContent = 'Disconnected'
}

const renderSaved = (unsaved) => {
  const el = $('saved')
  const label = el.querySelector('.label')
  el.dataset.state = unsaved === 0 ? 'saved' : 'unsaved'
  el.dataset.count = String(unsaved)
  label.textContent = unsaved === 0 ? 'Saved' : `Unsaved changes (${unsaved})`
  el.title = unsaved === 0
    ? 'Every edit made here is stored on the server'
    : 'Kept in this browser; stored on the server once it confirms them'
}

const renderPeople = (awareness) => {
  const box = $('people')
  const own = awareness.clientID
  const people = []
  awareness.getStates().forEach((state, clientId) => {
    if (clientId !== own && state && state.user) people.push({ clientId, ...state.user })
  })
  people.sort((a, b) => String(a.name).localeCompare(String(b.name)) || a.clientId - b.clientId)
  box.replaceChildren(...people.map(person => {
    const chip = document.createElement('span')
    chip.className = 'person'
    chip.dataset.clientId = String(person.clientId)
    chip.title = `${person.name} is here`
    const avatar = document.createElement('i')
    avatar.className = 'avatar'
    avatar.style.backgroundColor = person.color
    avatar.textContent = initials(String(person.name || '?'))
    const name = document.createElement('span')
    name.className = 'person-name'
    name.textContent = String(person.name || 'Anonymous')
    chip.append(avatar, name)
    return chip
  }))
  box.dataset.count = String(people.length)
}

/** Lets a reload during an outage bring the page back (the edits come from IndexedDB). */
const registerServiceWorker = () => {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((err) => {
    console.warn('collab: no offline page (service worker not registered):', err.message)
  })
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
  $('saved').hidden = true
  $('copy-link').hidden = true
  $('me-name').closest('.me').hidden = true
  const notice = document.createElement('div')
  notice.className = 'notice'
  notice.setAttribute('role', 'alert')
  const heading = document.createElement('h2')
  heading.textContent = 'This link cannot open a document'
  const reason = document.createElement('p')
  reason.textContent = `The server refuses this document because ${problem}.`
  const action = document.createElement('a')
  action.className = 'button'
  action.href = '/'
  action.textContent = 'Start a new document'
  notice.append(heading, reason, action)
  $('editor').replaceChildren(notice)
}

// --- start ------------------------------------------------------------------------------------

const main = async () => {
  const room = roomFromLocation()
  const title = displayName(room)
  $('doc-name').textContent = title
  $('doc-name').title = title
  document.title = `${title} · collab`
  const problem = documentNameProblem(room)
  if (problem !== null) {
    showUnusableName(problem)
    return
  }

  const doc = new Y.Doc()
  const ytext = doc.getText(TEXT_FIELD)
  const awareness = new Awareness(doc)
  const identity = loadIdentity()
  let sessionColour = identity.colour
  const setUser = ({ name, colour = sessionColour }) => {
    sessionColour = colour
    awareness.setLocalStateField('user', { name, color: colour, colorLight: lightColour(colour) })
    $('me-colour').style.backgroundColor = colour
  }
  setUser(identity)

  const local = new IndexeddbPersistence(`collab:${room}`, doc)
  let provider = null
  const confirmations = new Confirmations(doc, room, origin => origin === local || (provider !== null && origin === provider))
  confirmations.onChange(renderSaved)
  await loaded(local)
  await confirmations.start()

  const view = buildEditor(ytext, awareness)
  provider = new SyncProvider(doc, awareness, r => new WebSocketTransport(socketUrl(r)), room)
  confirmations.attach(provider)
  provider.on('status', renderConnection)
  setInterval(() => { if (provider.status.state === 'waiting') renderConnection(provider.status) }, 250)
  awareness.on('change', () => {
    renderPeople(awareness)
    avoidColourClash(awareness, identity, setUser)
  })
  provider.connect()

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
    if (e.key === 'Enter') { e.preventDefault(); commitName(); view.focus() }
    if (e.key === 'Escape') { nameInput.value = identity.name; view.focus() }
  })
  $('copy-link').addEventListener('click', copyLink)
  $('retry').addEventListener('click', () => provider.retryNow())

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

  registerServiceWorker()
  view.focus()
  // A handle for tests and for the curious; nothing in the page depends on it.
  window.collab = { room, doc, ytext, awareness, provider, confirmations, view }
}

main().catch((err) => {
  console.error('collab: the editor failed to start', err)
  const saved = $('saved')
  saved.dataset.state = 'error'
  saved.querySelector('.label').textContent = 'Failed to start — reload'
})
