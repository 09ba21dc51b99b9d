// Unit tests of share links: tokens in links, their claims as the page reads them, the expiry
// choices (node --test; run by tests/test_web_units.py).

import { test } from 'node:test'
import assert from 'node:assert/strict'

import { tokenInUrl, withoutToken, shareLink, claimsOf, expired, modeOf, Tokens, EXPIRIES } from '../src/access.js'
import { expiryChoices } from '../src/share.js'
import { socketUrl, pollUrl, documentUrl } from '../src/urls.js'

const base64url = (text) => Buffer.from(text).toString('base64').replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
const jwt = (claims) => `${base64url('{"alg":"HS256","typ":"JWT"}')}.${base64url(JSON.stringify(claims))}.c2lnbmF0dXJl`

test('a link carries its token in the fragment (or the query), and loses it once kept', () => {
  const token = jwt({ doc: 'plan', mode: 'read', exp: 2000000000 })
  assert.equal(tokenInUrl(`https://h/app/d/plan#token=${token}`), token)
  assert.equal(tokenInUrl(`https://h/app/d/plan?token=${token}`), token)
  assert.equal(tokenInUrl('https://h/app/d/plan'), null)
  assert.equal(withoutToken(`https://h/app/d/plan#token=${token}`), 'https://h/app/d/plan')
  assert.equal(withoutToken(`https://h/app/d/plan?token=${token}&transport=poll`), 'https://h/app/d/plan?transport=poll')
  assert.equal(shareLink('https://h/app/d/a%20b?token=old', token), `https://h/app/d/a%20b#token=${token}`)
  assert.equal(documentUrl('a%2Fb', 'https://h/app/'), 'https://h/app/d/a%2Fb')
})

test('connections carry the token as a query parameter', () => {
  assert.equal(socketUrl('a%2Fb', 'https://h/app/', 'x.y.z'), 'wss://h/app/ws/a%2Fb?acks=1&token=x.y.z')
  assert.equal(pollUrl('n', 'http://h/', 'a+b/c'), 'http://h/poll/n?acks=1&token=a%2Bb%2Fc')
  assert.equal(socketUrl('n', 'http://h/'), 'ws://h/ws/n?acks=1')
})

test('claims are read (not trusted) from the token; anything else is no claims', () => {
  const claims = { doc: 'café', mode: 'write', exp: 1700000000, name: 'Zoë' }
  assert.deepEqual(claimsOf(jwt(claims)), claims)
  assert.equal(modeOf(jwt({ mode: 'read' })), 'read')
  assert.equal(modeOf(jwt({ mode: 'admin' })), null)
  assert.equal(modeOf(null), null)
  for (const bad of ['', 'not-a-jwt', 'a.b.c', `x.${base64url('[1]')}.y`, `x.${base64url('null')}.y`]) {
    assert.equal(claimsOf(bad), null, bad)
  }
  assert.equal(expired({ exp: 100 }, 100_000), true)
  assert.equal(expired({ exp: 101 }, 100_000), false)
  assert.equal(expired(null), false)
})

test('tokens are kept per document', () => {
  const data = new Map()
  const storage = { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => data.set(k, v), removeItem: (k) => data.delete(k) }
  const tokens = new Tokens(storage)
  assert.deepEqual(tokens.headers('plan'), {})
  tokens.set('plan', 'abc')
  assert.equal(tokens.get('plan'), 'abc')
  assert.equal(tokens.get('other'), null)
  assert.deepEqual(tokens.headers('plan'), { Authorization: 'Bearer abc' })
  tokens.forget('plan')
  assert.equal(tokens.get('plan'), null)
})

test('the expiry choices never go past what the server allows', () => {
  assert.deepEqual(expiryChoices(30 * 86400).choices, EXPIRIES)
  assert.equal(expiryChoices(30 * 86400).chosen, 86400)
  assert.equal(expiryChoices(30 * 86400, 7 * 86400).chosen, 7 * 86400)
  assert.deepEqual(expiryChoices(2 * 86400).choices.map(c => c.label), ['1 hour', '1 day'])
  assert.equal(expiryChoices(7200, 7 * 86400).chosen, 86400 > 7200 ? 3600 : 86400)
  const short = expiryChoices(600)
  assert.deepEqual(short, { choices: [{ seconds: 600, label: 'until your own access ends' }], chosen: 600 })
})
