// Unit tests of the home page's listing of the server's documents and of when the page stops
// reconnecting (node --test; run by tests/test_web_units.py).

import { test } from 'node:test'
import assert from 'node:assert/strict'

import { listingPath, parseListing, listingProblem, formatSize, PAGE_SIZE } from '../src/listing.js'
import { isFinalClose } from '../src/provider.js'

test('listingPath: a page after a name, searched, relative to the app', () => {
  assert.equal(listingPath(), `api/docs?limit=${PAGE_SIZE}`)
  assert.equal(listingPath({ query: '  café plan ' }), `api/docs?limit=${PAGE_SIZE}&q=caf%C3%A9+plan`)
  // The name is sent as the server listed it (still percent-encoded), encoded once more.
  assert.equal(listingPath({ after: 'a%2Fb', limit: 10 }), 'api/docs?limit=10&after=a%252Fb')
  assert.equal(new URLSearchParams(listingPath({ after: 'a%2Fb' }).split('?')[1]).get('after'), 'a%2Fb')
})

test('parseListing keeps well-formed entries and reads the times', () => {
  const page = parseListing({
    documents: [
      { name: 'plan', title: 'Plan', size: 120, last_change: '2026-01-02T03:04:05.678Z' },
      { name: 'old', size: 5, last_change: null },
      { name: '', title: 'no name' },
      null,
      { title: 'nameless' }
    ],
    next: 'old'
  })
  assert.deepEqual(page, {
    documents: [
      { room: 'plan', title: 'Plan', size: 120, changed: Date.UTC(2026, 0, 2, 3, 4, 5, 678) },
      { room: 'old', title: '', size: 5, changed: null }
    ],
    next: 'old'
  })
  assert.deepEqual(parseListing(null), { documents: [], next: null })
  assert.deepEqual(parseListing({ documents: 'nope', next: 3 }), { documents: [], next: null })
})

test('a listing the server refuses hides the section; other failures are said', () => {
  assert.equal(listingProblem(401), null)
  assert.equal(listingProblem(403), null)
  assert.match(listingProblem(500), /could not list/)
  assert.match(listingProblem(503), /could not list/)
})

test('sizes for people', () => {
  assert.equal(formatSize(12), '12 bytes')
  assert.equal(formatSize(3400), '3.4 KB')
  assert.equal(formatSize(1_250_000), '1.3 MB')
})

test('the page stops reconnecting only where reconnecting cannot help', () => {
  for (const code of [4401, 4403, 4410]) assert.equal(isFinalClose(code), true, String(code))
  for (const code of [1000, 1006, 1011, 1012, 1013, 4429, 4503, 4413]) assert.equal(isFinalClose(code), false, String(code))
})
