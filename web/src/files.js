// Text in and out: a document's text downloaded exactly as it is, and a text file read into a
// new document.

/** Largest file taken as a new document (the server also bounds a document's size). */
export const MAX_IMPORT_BYTES = 5 * 1024 * 1024
const TEXT_TYPES = /^(text\/.*|application\/(x-)?markdown)$/
const TEXT_NAMES = /\.(md|markdown|mdown|mkd|txt|text)$/i

export const FORMATS = {
  md: { extension: 'md', type: 'text/markdown;charset=utf-8' },
  txt: { extension: 'txt', type: 'text/plain;charset=utf-8' }
}

/** A file name for `title` that every system accepts. */
export const fileNameFor = (title, format) => {
  // eslint-disable-next-line no-control-regex
  const stem = title.replace(/[\u0000-\u001f\u007f<>:"/\\|?*]+/g, ' ').replace(/\s+/g, ' ').trim()
    .replace(/^\.+/, '').slice(0, 120).trim() || 'document'
  return `${stem}.${FORMATS[format].extension}`
}

/** Save `text` as a file: the exact characters of the document, in UTF-8, nothing added. */
export const download = (text, title, format) => {
  const blob = new Blob([text], { type: FORMATS[format].type })
  const url = URL.createObjectURL(blob)
  const link = document.createElement('a')
  link.href = url
  link.download = fileNameFor(title, format)
  link.hidden = true
  document.body.append(link)
  link.click()
  link.remove()
  setTimeout(() => URL.revokeObjectURL(url), 10_000)
}

export class ImportProblem extends Error {}

/** The text of a dropped or chosen file, or an ImportProblem saying why not. Line endings become
 * "\n" (the editor's, so that what is downloaded later is what was edited). */
export const readTextFile = async (file) => {
  if (!TEXT_NAMES.test(file.name) && !TEXT_TYPES.test(file.type)) {
    throw new ImportProblem(`“${file.name}” is not a Markdown or text file (.md or .txt)`)
  }
  if (file.size > MAX_IMPORT_BYTES) {
    throw new ImportProblem(`“${file.name}” is larger than ${MAX_IMPORT_BYTES / 1024 / 1024} MiB`)
  }
  const bytes = new Uint8Array(await file.arrayBuffer())
  let text
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    throw new ImportProblem(`“${file.name}” is not UTF-8 text`)
  }
  if (text.includes('\u0000')) throw new ImportProblem(`“${file.name}” is not a text file`)
  return text.replace(/\r\n?/g, '\n')
}
