// A document's title lives in the document itself, as the Y.Text "title" beside the text, so it
// syncs, merges and survives like the text does. This binds it to a plain <input>: a local edit
// becomes the smallest delete/insert on the Y.Text (two people editing different words of the
// title both keep theirs), and a remote edit updates the field without moving the caret.

export const TITLE_MAX = 200

const isHigh = (code) => code >= 0xd800 && code <= 0xdbff
const isLow = (code) => code >= 0xdc00 && code <= 0xdfff

/** The one change that turns `before` into `after`: {index, remove, insert}, never splitting a
 * surrogate pair (UTF-16 indices, as Y.Text counts them). `caret` (where the caret is in
 * `after`) picks the right one of equal changes: typing "Q3 " before "Quarterly" inserts at 0,
 * not "3 Q" at 1, which matters when someone else edits the title at the same time. */
export const textChange = (before, after, caret = after.length) => {
  const shorter = Math.min(before.length, after.length)
  const limit = Math.max(0, Math.min(shorter, caret - Math.max(0, after.length - before.length)))
  let start = 0
  while (start < limit && before.charCodeAt(start) === after.charCodeAt(start)) start++
  if (start > 0 && start < before.length && isHigh(before.charCodeAt(start - 1))) start--
  let end = 0
  while (end < shorter - start &&
    before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)) end++
  if (end > 0 && isLow(before.charCodeAt(before.length - end))) end--
  return { index: start, remove: before.length - start - end, insert: after.slice(start, after.length - end) }
}

/** Where `index` ends up after a Y.Text delta; text inserted exactly at it goes after it. */
export const mapIndex = (delta, index) => {
  let old = 0
  let mapped = index
  for (const op of delta) {
    if (old > index) break
    if (op.retain !== undefined) {
      old += op.retain
    } else if (op.insert !== undefined) {
      if (old < index) mapped += op.insert.length
    } else if (op.delete !== undefined) {
      mapped -= Math.max(0, Math.min(index, old + op.delete) - old)
      old += op.delete
    }
  }
  return mapped
}

/** A title as one line of a text field (same length, so indices still match the Y.Text). */
const asLine = (title) => title.replace(/[\r\n\t]/g, ' ')

/**
 * Keep `input` and `ytitle` the same, both ways. `onChange(title)` runs after every change from
 * either side. While an input method composes, remote changes wait and are merged at its end.
 */
export const bindTitle = (ytitle, input, onChange) => {
  const origin = { title: 'input' }
  let base = asLine(ytitle.toString())
  let composing = false
  let missed = []
  input.value = base

  const show = (caret) => {
    base = asLine(ytitle.toString())
    input.value = base
    if (caret && document.activeElement === input) input.setSelectionRange(caret[0], caret[1])
  }

  const commit = () => {
    const { index, remove, insert } = textChange(base, input.value, input.selectionEnd ?? input.value.length)
    let from = index
    let to = index + remove
    for (const delta of missed) {
      from = mapIndex(delta, from)
      to = Math.max(from, mapIndex(delta, to))
    }
    const caret = [input.selectionStart, input.selectionEnd]
    const shifted = missed.length > 0
    missed = []
    if (to > from || insert) {
      ytitle.doc.transact(() => {
        if (to > from) ytitle.delete(from, to - from)
        if (insert) ytitle.insert(from, insert)
      }, origin)
    }
    if (shifted || base !== input.value) show(shifted ? null : caret)
  }

  input.addEventListener('input', (event) => { if (!event.isComposing && !composing) commit() })
  input.addEventListener('compositionstart', () => { composing = true })
  input.addEventListener('compositionend', () => { composing = false; commit() })

  ytitle.observe((event, transaction) => {
    if (transaction.origin !== origin) {
      if (composing) {
        missed.push(event.delta)
      } else {
        const caret = [mapIndex(event.delta, input.selectionStart ?? 0), mapIndex(event.delta, input.selectionEnd ?? 0)]
        show(caret)
      }
    } else {
      base = asLine(ytitle.toString())
    }
    onChange(ytitle.toString())
  })
}
