// Unit tests of the editor's pure parts (node --test; run by tests/test_web_units.py).

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'

import { pageOf, socketUrl, apiUrl, workerUrl, workerScope } from '../src/urls.js'
import { textChange, mapIndex } from '../src/title.js'
import { parseRecent, withOpened, withTitle, without, matching, RECENT_LIMIT } from '../src/recent.js'
import { countWords, countCharacters, describeCounts } from '../src/counts.js'
import { documentNameForFile, titleForFile, randomDocumentName, safeColour, documentNameProblem } from '../src/names.js'
import { fileNameFor, readTextFile, ImportProblem, MAX_IMPORT_BYTES } from '../src/files.js'
import { placeLabels } from '../src/remote-selections.js'
import { split } from '../src/people.js'

test('pageOf: the app root and the room, under any prefix', () => {
  assert.deepEqual(pageOf('/'), { base: '/', room: null })
  assert.deepEqual(pageOf('/d/notes'), { base: '/', room: 'notes' })
  assert.deepEqual(pageOf('/collab/'), { base: '/collab/', room: null })
  assert.deepEqual(pageOf('/collab/d/a%20b'), { base: '/collab/', room: 'a%20b' })
  assert.deepEqual(pageOf('/collab/d/team/d/notes'), { base: '/collab/', room: 'team/d/notes' })
  assert.deepEqual(pageOf('/d/'), { base: '/', room: null })
  assert.deepEqual(pageOf('/a/b/index'), { base: '/a/b/', room: null })
})

test('URLs are resolved against the base, the socket keeps the raw room name', () => {
  const base = 'https://example.com/collab/'
  assert.equal(socketUrl('a%2Fb', base), 'wss://example.com/collab/ws/a%2Fb?acks=1')
  assert.equal(socketUrl('x', 'http://h:8080/'), 'ws://h:8080/ws/x?acks=1')
  assert.equal(apiUrl('api/docs', base), 'https://example.com/collab/api/docs')
  assert.equal(workerUrl(base), 'https://example.com/collab/sw.js')
  assert.equal(workerScope(base), 'https://example.com/collab/')
})

const applyChange = (before, { index, remove, insert }) =>
  before.slice(0, index) + insert + before.slice(index + remove)

test('textChange is the one edit between two strings, never splitting a surrogate pair', () => {
  // The caret (after the typed text) says where the edit was.
  assert.deepEqual(textChange('Quarterly report', 'Q3 Quarterly report', 3), { index: 0, remove: 0, insert: 'Q3 ' })
  assert.deepEqual(textChange('Quarterly report', 'Q3 Quarterly report'), { index: 1, remove: 0, insert: '3 Q' })
  assert.deepEqual(textChange('aaa', 'aa', 0), { index: 0, remove: 1, insert: '' })
  assert.deepEqual(textChange('abc', 'abc'), { index: 3, remove: 0, insert: '' })
  assert.deepEqual(textChange('aXc', 'aYc'), { index: 1, remove: 1, insert: 'Y' })
  // Two emoji sharing a high surrogate: the change must cover whole characters.
  const change = textChange('a😀b', 'a😁b')
  assert.deepEqual(change, { index: 1, remove: 2, insert: '😁' })
  const alphabet = ['a', 'b', ' ', '😀', '😁', 'é']
  let seed = 7
  const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const word = () => Array.from({ length: Math.floor(random() * 6) }, () => alphabet[Math.floor(random() * alphabet.length)]).join('')
  for (let i = 0; i < 2000; i++) {
    const before = word()
    const after = word()
    const c = textChange(before, after, Math.floor(random() * (after.length + 1)))
    assert.equal(applyChange(before, c), after)
    assert.ok(!/[\ud800-\udbff]$/.test(before.slice(0, c.index)), 'split a pair at the start')
  }
})

test('mapIndex follows a caret through the deltas Yjs reports', () => {
  const doc = new Y.Doc()
  const text = doc.getText('title')
  text.insert(0, 'Quarterly report')
  const deltas = []
  text.observe(event => deltas.push(event.delta))
  text.insert(0, 'Q3 ') // before the caret
  assert.equal(mapIndex(deltas.at(-1), 9), 12)
  text.insert(text.length, ' (draft)') // after it
  assert.equal(mapIndex(deltas.at(-1), 12), 12)
  text.delete(0, 3) // a deletion before it
  assert.equal(mapIndex(deltas.at(-1), 12), 9)
  text.delete(7, 5) // a deletion around it: the caret lands where the deletion was
  assert.equal(mapIndex(deltas.at(-1), 9), 7)
  text.insert(7, 'XY') // at the caret: it stays before
  assert.equal(mapIndex(deltas.at(-1), 7), 7)
})

test('the list of documents: most recent first, bounded, titles kept', () => {
  assert.deepEqual(parseRecent('not json'), [])
  assert.deepEqual(parseRecent('[{"room": 1}, {"room": "a", "title": "", "opened": 5}]'), [{ room: 'a', title: '', opened: 5 }])
  let list = []
  list = withOpened(list, 'a', 1, 'Alpha')
  list = withOpened(list, 'b', 2, '')
  list = withOpened(list, 'a', 3) // reopened: to the front, its title kept
  assert.deepEqual(list.map(e => [e.room, e.title]), [['a', 'Alpha'], ['b', '']])
  list = withTitle(list, 'b', 'Beta')
  assert.deepEqual(list.map(e => e.room), ['a', 'b']) // renaming does not reorder
  assert.deepEqual(without(list, 'a').map(e => e.room), ['b'])
  for (let i = 0; i < RECENT_LIMIT + 10; i++) list = withOpened(list, `r${i}`, 10 + i, '')
  assert.equal(list.length, RECENT_LIMIT)
  assert.equal(list[0].room, `r${RECENT_LIMIT + 9}`)
  const docs = [{ room: 'q3', title: 'Café plans', opened: 1 }, { room: 'misty%20otter', title: '', opened: 2 }]
  assert.deepEqual(matching(docs, 'CAFE').map(e => e.room), ['q3'])
  assert.deepEqual(matching(docs, 'misty otter', decodeURIComponent).map(e => e.room), ['misty%20otter'])
  assert.equal(matching(docs, '  ').length, 2)
})

test('counts: words as Unicode segments them, characters as people see them', () => {
  assert.equal(countWords(''), 0)
  assert.equal(countWords('# Hello, **wide** world!'), 3)
  assert.equal(countWords("it's a don't-care"), 4)
  assert.equal(countCharacters('naïve café 😀\n👍🏽'), 13)
  assert.equal(describeCounts('one two', 'one'), '1 of 2 words · 3 of 7 characters')
  assert.equal(describeCounts('one'), '1 word · 3 characters')
})

test('names: for imported files, readable and unique; colours only as hex', () => {
  assert.match(documentNameForFile('Meeting notes (v2).md'), /^meeting-notes-v2-[a-z0-9]{6}$/)
  assert.match(documentNameForFile('Crème brûlée.txt'), /^creme-brulee-[a-z0-9]{6}$/)
  assert.match(documentNameForFile('会议.md'), /^[a-z]+-[a-z]+-\d{4}-[a-z0-9]{6}$/)
  assert.notEqual(documentNameForFile('a.md'), documentNameForFile('a.md'))
  assert.equal(documentNameProblem(documentNameForFile('x'.repeat(400) + '.md')), null)
  assert.equal(titleForFile('Trip plan.md'), 'Trip plan')
  assert.equal(titleForFile('.md'), '.md')
  assert.match(randomDocumentName(), /^[a-z]+-[a-z]+-\d{4}$/)
  assert.equal(safeColour('#30a46c'), '#30a46c')
  assert.equal(safeColour('red;position:fixed'), '#8b8d98')
  assert.equal(safeColour(undefined, '#000000'), '#000000')
})

test('files: safe names, text only, line endings made the editor’s', async () => {
  assert.equal(fileNameFor('Trip: plan/notes?', 'md'), 'Trip plan notes.md')
  assert.equal(fileNameFor('...', 'txt'), 'document.txt')
  assert.equal(await readTextFile(new File(['\ufeffa\r\nb\rc\n'], 'x.txt', { type: 'text/plain' })), 'a\nb\nc\n')
  await assert.rejects(readTextFile(new File(['x'], 'x.png', { type: 'image/png' })), ImportProblem)
  await assert.rejects(readTextFile(new File([new Uint8Array([0xff, 0xfe, 0x41])], 'x.md')), /not UTF-8/)
  await assert.rejects(readTextFile(new File(['a\u0000b'], 'x.md')), /not a text file/)
  await assert.rejects(readTextFile(new File([new Uint8Array(MAX_IMPORT_BYTES + 1)], 'x.md')), /larger than/)
})

test('placeLabels: never two overlapping, the first in priority order placed first', () => {
  const caret = (id, x) => ({ id, x, top: 100, bottom: 120, width: 60, height: 16 })
  const carets = [caret(1, 10), caret(2, 20), caret(3, 30), caret(4, 200)]
  const placed = placeLabels(carets, 0, 1000)
  assert.deepEqual([...placed.keys()], [1, 2, 4])
  assert.equal(placed.get(1).below, false)
  assert.equal(placed.get(2).below, true)
  const boxes = [...placed.values()]
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, b] = [boxes[i], boxes[j]]
      assert.ok(a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top)
    }
  }
  // Kept inside the text column.
  assert.equal(placeLabels([caret(9, 990)], 0, 1000).get(9).left, 940)
})

test('people: the first few, then +N', () => {
  const people = [1, 2, 3, 4, 5, 6, 7]
  assert.deepEqual(split(people.slice(0, 5), 5), { shown: [1, 2, 3, 4, 5], hidden: [] })
  assert.deepEqual(split(people, 5), { shown: [1, 2, 3, 4], hidden: [5, 6, 7] })
  assert.deepEqual(split(people, 3), { shown: [1, 2], hidden: [3, 4, 5, 6, 7] })
})
