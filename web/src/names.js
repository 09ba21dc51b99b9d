// Short readable names for people and documents, and a colour for each person.

const ADJECTIVES = [
  'amber', 'brisk', 'calm', 'clever', 'coral', 'dapper', 'eager', 'fancy', 'gentle', 'golden',
  'happy', 'jolly', 'keen', 'lively', 'lucky', 'mellow', 'merry', 'misty', 'noble', 'olive',
  'plucky', 'quiet', 'rapid', 'rosy', 'rustic', 'silver', 'sunny', 'swift', 'tidy', 'witty'
]
const ANIMALS = [
  'badger', 'beaver', 'bison', 'crane', 'dolphin', 'falcon', 'ferret', 'finch', 'fox', 'gecko',
  'heron', 'ibis', 'koala', 'lemur', 'lynx', 'marten', 'moose', 'newt', 'otter', 'owl',
  'panda', 'puffin', 'quail', 'raven', 'seal', 'stoat', 'swan', 'tapir', 'walrus', 'wren'
]

// Readable on white and on dark backgrounds; each has a translucent variant for selections.
export const COLOURS = [
  '#e5484d', '#f76b15', '#d6a000', '#30a46c', '#12a594', '#0090ff', '#3e63dd', '#8e4ec6',
  '#d6409f', '#978365'
]

/** A uniform random integer in [0, n), from the browser's cryptographic generator: names are
 * the only thing that keeps an open server's documents apart. */
const randomBelow = (n) => crypto.getRandomValues(new Uint32Array(1))[0] % n

const pick = (list) => list[randomBelow(list.length)]

const capitalise = (word) => word.charAt(0).toUpperCase() + word.slice(1)

/** A short readable name such as `misty-otter-4821` (9 million of them). */
export const randomDocumentName = () =>
  `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${String(randomBelow(10000)).padStart(4, '0')}`

const SLUG_MAX = 40

/** A new document's name for an imported file: "Meeting notes (v2).md" → `meeting-notes-v2-k3x9q2`.
 * The random tail keeps two people's "notes.md" apart. */
export const documentNameForFile = (fileName) => {
  const stem = fileName.replace(/\.[^.]*$/, '')
  const slug = stem.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase()
    .replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, SLUG_MAX).replace(/-+$/, '')
  const tail = Array.from({ length: 6 }, () => '0123456789abcdefghijklmnopqrstuvwxyz'[randomBelow(36)]).join('')
  return slug ? `${slug}-${tail}` : `${randomDocumentName()}-${tail}`
}

/** The title a document imported from `fileName` starts with: its name without the extension. */
export const titleForFile = (fileName) => fileName.replace(/\.[^.]*$/, '').trim() || fileName

export const randomPersonName = () => `${capitalise(pick(ADJECTIVES))} ${capitalise(pick(ANIMALS))}`

export const randomColour = () => pick(COLOURS)

const HEX_COLOUR = /^#[0-9a-f]{6}$/i

/** A colour another client announced, if it is a plain hex colour: anything else could carry
 * more CSS into a style attribute. */
export const safeColour = (colour, fallback = '#8b8d98') =>
  typeof colour === 'string' && HEX_COLOUR.test(colour) ? colour : fallback

/** `#rrggbb` → the same colour at ~20% opacity, for other people's selections. */
export const lightColour = (colour) => `${colour}33`

export const initials = (name) => {
  const parts = name.trim().split(/\s+/).filter(Boolean)
  if (parts.length === 0) return '?'
  return (parts[0][0] + (parts.length > 1 ? parts[parts.length - 1][0] : '')).toUpperCase()
}

/** The server's limit on a document name: the raw, percent-encoded path segment, in bytes. */
export const MAX_DOCUMENT_NAME_BYTES = 255
const ENCODED_CONTROL = /%(?:[01][0-9a-f]|7f)/i
// eslint-disable-next-line no-control-regex
const RAW_CONTROL = /[\u0000-\u001f\u007f]/

/** Why the server would refuse `room` (the raw path segment after /d/), or null if it is fine.
 * The server refuses such names before the WebSocket opens, and a browser cannot read the reason
 * of a refused upgrade, so the page must tell the person itself instead of retrying forever. */
export const documentNameProblem = (room) => {
  if (new TextEncoder().encode(room).length > MAX_DOCUMENT_NAME_BYTES) {
    return `its name is longer than ${MAX_DOCUMENT_NAME_BYTES} bytes (as written in the link)`
  }
  if (ENCODED_CONTROL.test(room) || RAW_CONTROL.test(room)) return 'its name contains control characters'
  return null
}
