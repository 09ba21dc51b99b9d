// Word and character counts, as a word processor gives them: words as the browser's Unicode
// word segmentation finds them (Chinese and Japanese included), characters as people see
// them (an emoji or an accented letter is one), line breaks not counted.

const segmenter = (granularity) =>
  typeof Intl !== 'undefined' && Intl.Segmenter ? new Intl.Segmenter(undefined, { granularity }) : null

const words = segmenter('word')
const graphemes = segmenter('grapheme')
const WORD = /[\p{L}\p{N}\p{M}]+(?:['’.-][\p{L}\p{N}\p{M}]+)*/gu

export const countWords = (text) => {
  if (!words) return (text.match(WORD) || []).length
  let n = 0
  for (const segment of words.segment(text)) if (segment.isWordLike) n++
  return n
}

export const countCharacters = (text) => {
  const flat = text.replace(/\r?\n|\r/g, '')
  if (!graphemes) return Array.from(flat).length
  let n = 0
  for (const _ of graphemes.segment(flat)) n++ // eslint-disable-line no-unused-vars
  return n
}

const plural = (n, one, many) => `${n.toLocaleString()} ${n === 1 ? one : many}`

/** "1,204 words · 7,311 characters", or "12 of 1,204 words · …" for a selection. */
export const describeCounts = (text, selected = '') => {
  const total = { words: countWords(text), characters: countCharacters(text) }
  if (!selected) return plural(total.words, 'word', 'words') + ' · ' + plural(total.characters, 'character', 'characters')
  const part = { words: countWords(selected), characters: countCharacters(selected) }
  return `${part.words.toLocaleString()} of ${plural(total.words, 'word', 'words')} · ` +
    `${part.characters.toLocaleString()} of ${plural(total.characters, 'character', 'characters')}`
}
