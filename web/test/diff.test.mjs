// Unit tests of the line differences used by version history (node --test).

import { test } from 'node:test'
import assert from 'node:assert/strict'

import { linesOf, diffLines, editsBetween, countChanges } from '../src/diff.js'
import { authorsLine, versionTitle } from '../src/history.js'

const apply = (text, edits) => edits.reduce((t, e) => t.slice(0, e.index) + e.insert + t.slice(e.index + e.remove), text)

test('lines keep their line breaks', () => {
  assert.deepEqual(linesOf(''), [])
  assert.deepEqual(linesOf('a'), ['a'])
  assert.deepEqual(linesOf('a\nb\n'), ['a\n', 'b\n'])
  assert.deepEqual(linesOf('\n\nx'), ['\n', '\n', 'x'])
})

test('diffLines marks what only the old and only the new text have', () => {
  const parts = diffLines('# Plan\nfirst draft\nthe end\n', '# Plan\ncleaned up\nthe end\nmore\n')
  assert.deepEqual(parts, [
    { kind: 'same', lines: ['# Plan\n'] },
    { kind: 'removed', lines: ['first draft\n'] },
    { kind: 'added', lines: ['cleaned up\n'] },
    { kind: 'same', lines: ['the end\n'] },
    { kind: 'added', lines: ['more\n'] }
  ])
  assert.deepEqual(countChanges(parts), { added: 2, removed: 1 })
  assert.deepEqual(diffLines('same\n', 'same\n'), [{ kind: 'same', lines: ['same\n'] }])
  assert.deepEqual(diffLines('', 'new'), [{ kind: 'added', lines: ['new'] }])
  assert.deepEqual(diffLines('a\nb\nc\n', 'a\nc\n'), [
    { kind: 'same', lines: ['a\n'] }, { kind: 'removed', lines: ['b\n'] }, { kind: 'same', lines: ['c\n'] }
  ])
})

test('editsBetween turns one text into the other, touching only changed lines', () => {
  const current = 'keep\nchange me\nkeep too\ndrop\n'
  const target = 'keep\nchanged\nkeep too\n'
  const edits = editsBetween(current, target)
  assert.equal(apply(current, edits), target)
  assert.deepEqual(edits, [{ index: 24, remove: 5, insert: '' }, { index: 5, remove: 10, insert: 'changed\n' }])
  assert.deepEqual(editsBetween('same', 'same'), [])
  // Random texts over a small alphabet of lines (with emoji and no final newline).
  let seed = 11
  const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const words = ['a', 'b', 'c', '😀', 'long line of text', '']
  const text = () => Array.from({ length: Math.floor(random() * 12) }, () => words[Math.floor(random() * words.length)]).join('\n')
  for (let i = 0; i < 3000; i++) {
    const before = text()
    const after = text()
    assert.equal(apply(before, editsBetween(before, after)), after, JSON.stringify([before, after]))
    const parts = diffLines(before, after)
    assert.equal(parts.filter(p => p.kind !== 'added').map(p => p.lines.join('')).join(''), before)
    assert.equal(parts.filter(p => p.kind !== 'removed').map(p => p.lines.join('')).join(''), after)
  }
})

test('a very different long text still diffs correctly', () => {
  const before = Array.from({ length: 5000 }, (_, i) => `old ${i}\n`).join('')
  const after = Array.from({ length: 5000 }, (_, i) => `new ${i}\n`).join('')
  assert.equal(apply(before, editsBetween(before, after)), after)
})

test('who edited a version, and how it is named', () => {
  assert.equal(authorsLine([]), '')
  assert.equal(authorsLine(['Ada']), 'Ada')
  assert.equal(authorsLine(['Ada', 'Bob']), 'Ada and Bob')
  assert.equal(authorsLine(['Ada', 'Bob', 'Carol']), 'Ada, Bob and Carol')
  assert.equal(authorsLine(['Ada', 'Bob', 'Carol', 'Dan']), 'Ada, Bob and 2 others')
  assert.equal(versionTitle({ label: 'Draft', at: '2026-01-02T03:04:05Z' }), 'Draft')
  assert.match(versionTitle({ label: '', at: '2026-01-02T03:04:05Z' }), /2026/)
})
