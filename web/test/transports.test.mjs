// Unit tests of the HTTP fallback transport and of the policy that chooses between transports
// (node --test; run by tests/test_web_units.py). The fetches are answered by a fake server
// here; the real one is exercised by the browser tests.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as encoding from 'lib0/encoding'

import { PollTransport, encodeBody, decodeBody, closeCodeFor, VERSION_HEADER } from '../src/poll.js'
import { TransportPolicy, forcedTransport, FAILURES_BEFORE_FALLBACK, PROBE_INTERVAL_MS } from '../src/transports.js'
import { pollUrl } from '../src/urls.js'

const message = (...bytes) => new Uint8Array(bytes)
const step1 = (vector) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, 0)
  encoding.writeVarUint(encoder, 0)
  encoding.writeVarUint8Array(encoder, vector)
  return encoding.toUint8Array(encoder)
}
const tick = () => new Promise(resolve => setTimeout(resolve, 0))

test('bodies are length-prefixed messages, both ways', () => {
  const frames = [message(0, 0, 1, 0), message(1, 2, 0, 0), message()]
  assert.deepEqual(decodeBody(encodeBody(frames)), frames)
  assert.throws(() => decodeBody(message(5, 1)))
})

test('HTTP refusals map to the close codes that mean the same', () => {
  assert.equal(closeCodeFor(503, 'server restarting, poll again'), 1012)
  assert.equal(closeCodeFor(503, 'not stored yet; send again'), 1013)
  assert.equal(closeCodeFor(401), 4401)
  assert.equal(closeCodeFor(403, 'access denied'), 4403)
  assert.equal(closeCodeFor(413), 1009)
  assert.equal(closeCodeFor(502), 1006)
})

test('the fallback URL is relative to where the app is mounted', () => {
  assert.equal(pollUrl('a%2Fb', 'https://example.com/collab/'), 'https://example.com/collab/poll/a%2Fb?acks=1')
})

test('the page URL may force a transport', () => {
  assert.equal(forcedTransport('?transport=poll'), 'poll')
  assert.equal(forcedTransport('?x=1&transport=websocket'), 'websocket')
  assert.equal(forcedTransport('?transport=carrier-pigeon'), null)
  assert.equal(forcedTransport(''), null)
})

/** A fake server: records requests, answers polls from a queue of answers (or parks them). */
class FakeServer {
  constructor () {
    this.requests = []
    this.parked = []
    this.answers = []
    this.fetch = async (url, init) => {
      const request = { url: new URL(url), body: decodeBody(new Uint8Array(init.body)), init }
      this.requests.push(request)
      if (request.url.searchParams.get('wait') === '1') {
        const answer = this.answers.shift()
        if (answer) return answer
        return new Promise((resolve, reject) => {
          this.parked.push(resolve)
          init.signal.addEventListener('abort', () => reject(new Error('aborted')))
        })
      }
      return response(200, [])
    }
  }
}

const response = (status, frames, version = null, text = '') => ({
  ok: status === 200,
  status,
  headers: { get: (name) => (name === VERSION_HEADER ? version : null) },
  arrayBuffer: async () => encodeBody(frames).buffer,
  text: async () => text
})

const connected = (transport) => {
  const got = { opened: 0, messages: [], closed: [], alive: 0 }
  transport.connect({
    onOpen: () => { got.opened += 1 },
    onMessage: (data) => got.messages.push(data),
    onClose: (info) => got.closed.push(info),
    onError: () => {},
    stateVector: () => message(1, 7, 3),
    onAlive: () => { got.alive += 1 }
  })
  return got
}

test('a poll carries the state vector and the last version; sends go apart, batched', async () => {
  const server = new FakeServer()
  const target = new EventTarget()
  const transport = new PollTransport('http://h/app/poll/doc?acks=1', { fetch: server.fetch, target })
  const got = connected(transport)
  await tick()
  assert.equal(got.opened, 1)
  server.answers.push(response(200, [message(0, 1, 0)], 'v1'), response(200, [], 'v2'))
  transport.send(step1(message(0)))
  transport.send(message(0, 2, 1, 9))
  transport.send(message(1, 1, 0))
  await tick()
  await tick()
  const polls = server.requests.filter(r => r.url.searchParams.get('wait') === '1')
  const sends = server.requests.filter(r => r.url.searchParams.get('wait') !== '1')
  assert.deepEqual(polls[0].body, [step1(message(0))]) // the provider's own step 1 first
  assert.equal(polls[0].url.searchParams.get('version'), null)
  assert.deepEqual(polls[1].body, [step1(message(1, 7, 3))]) // then the current state vector
  assert.equal(polls[1].url.searchParams.get('version'), 'v1')
  assert.equal(polls[2].url.searchParams.get('version'), 'v2')
  assert.equal(sends.length, 1)
  assert.deepEqual(sends[0].body, [message(0, 2, 1, 9), message(1, 1, 0)])
  assert.equal(sends[0].url.pathname, '/app/poll/doc')
  assert.equal(sends[0].url.searchParams.get('acks'), '1')
  assert.equal(new Set(server.requests.map(r => r.url.searchParams.get('client'))).size, 1)
  assert.deepEqual(got.messages, [message(0, 1, 0)])
  assert.ok(got.alive >= 2) // an empty answer is still a sign of life
  transport.close()
  await tick()
  const bye = server.requests.at(-1)
  assert.equal(bye.url.searchParams.get('bye'), '1')
  assert.deepEqual(got.closed, [{ code: 1000, reason: '' }])
})

test('a refused poll ends the transport with the matching close code', async () => {
  const server = new FakeServer()
  server.answers.push(response(401, [], null, 'no token'))
  const transport = new PollTransport('http://h/poll/doc', { fetch: server.fetch, target: new EventTarget() })
  const got = connected(transport)
  transport.send(step1(message(0)))
  await tick()
  await tick()
  assert.deepEqual(got.closed, [{ code: 4401, reason: 'no token' }])
})

test("a read-only client's changes go nowhere, its presence still goes out", async () => {
  const server = new FakeServer()
  const bodies = []
  const fetch = async (url, init) => {
    const body = decodeBody(new Uint8Array(init.body))
    if (new URL(url).searchParams.get('wait') === '1') return server.fetch(url, init)
    bodies.push(body)
    return body.some(f => f[0] === 0) ? response(403, [], null, 'read-only') : response(200, [])
  }
  const transport = new PollTransport('http://h/poll/doc', { fetch, target: new EventTarget() })
  const got = connected(transport)
  transport.send(message(0, 2, 1, 9))
  transport.send(message(1, 1, 0))
  for (let i = 0; i < 5; i++) await tick()
  transport.send(message(0, 2, 1, 8))
  transport.send(message(1, 1, 1))
  for (let i = 0; i < 5; i++) await tick()
  assert.deepEqual(bodies, [[message(0, 2, 1, 9), message(1, 1, 0)], [message(1, 1, 0)], [message(1, 1, 1)]])
  assert.deepEqual(got.closed, [])
})

test('a goodbye is a beacon with what is still queued', async () => {
  const server = new FakeServer()
  const target = new EventTarget()
  const beacons = []
  const transport = new PollTransport('http://h/poll/doc', {
    fetch: server.fetch, target, sendBeacon: (url, blob) => beacons.push({ url: new URL(url), blob })
  })
  connected(transport)
  transport.send(message(1, 1, 0))
  transport.goodbye()
  assert.equal(beacons.length, 1)
  assert.equal(beacons[0].url.searchParams.get('bye'), '1')
  assert.deepEqual(decodeBody(new Uint8Array(await beacons[0].blob.arrayBuffer())), [message(1, 1, 0)])
})

/** A fake transport whose attempts open, sync or fail on command. */
const fakeTransport = (kind, log) => {
  const transport = {
    kind,
    connect (handlers) { transport.handlers = handlers; log.push(transport) },
    close () {}
  }
  return transport
}

const fakeProvider = () => {
  const listeners = {}
  return {
    reconnected: 0,
    on (name, fn) { listeners[name] = fn },
    emit (name) { listeners[name]?.() },
    reconnect () { this.reconnected += 1 }
  }
}

const fakeTimers = () => {
  const timers = []
  return {
    timers,
    setTimer: (fn, ms) => { timers.push({ fn, ms }); return timers.length },
    clearTimer: () => {},
    async fire () { const timer = timers.shift(); await timer.fn() }
  }
}

test('the policy falls back after failed WebSocket attempts and moves back when a probe works', async () => {
  const log = []
  const probes = []
  const timers = fakeTimers()
  const policy = new TransportPolicy({
    socket: () => fakeTransport('websocket', log),
    poll: () => fakeTransport('poll', log),
    probe: async () => probes.shift(),
    ...timers
  })
  const provider = fakeProvider()
  policy.attach(provider)
  for (let i = 0; i < FAILURES_BEFORE_FALLBACK; i++) {
    const transport = policy.make('doc')
    assert.equal(transport.kind, 'websocket')
    transport.connect({ onClose: () => {} })
    transport.handlers.onClose({ code: 1006 }) // refused before it synced
  }
  const fallback = policy.make('doc')
  assert.equal(fallback.kind, 'poll')
  fallback.connect({ onClose: () => {} })
  provider.emit('synced')
  assert.equal(timers.timers[0].ms, PROBE_INTERVAL_MS)
  probes.push(false, true)
  await timers.fire() // WebSockets still blocked: stay, probe again later
  assert.equal(provider.reconnected, 0)
  assert.equal(policy.make('doc').kind, 'poll')
  await timers.fire() // now they pass: move back
  assert.equal(provider.reconnected, 1)
  assert.equal(policy.make('doc').kind, 'websocket')
})

test('a WebSocket that synced is not a failure, and a forced transport is kept', () => {
  const log = []
  const policy = new TransportPolicy({
    socket: () => fakeTransport('websocket', log), poll: () => fakeTransport('poll', log), probe: async () => true
  })
  const provider = fakeProvider()
  policy.attach(provider)
  for (let i = 0; i < 5; i++) {
    const transport = policy.make('doc')
    transport.connect({ onClose: () => {} })
    provider.emit('synced')
    transport.handlers.onClose({ code: 1006 }) // dropped later, as any connection may be
  }
  assert.equal(policy.make('doc').kind, 'websocket')
  const timers = fakeTimers()
  const forced = new TransportPolicy({
    socket: () => fakeTransport('websocket', log), poll: () => fakeTransport('poll', log), probe: async () => true,
    forced: 'poll', ...timers
  })
  assert.equal(forced.make('doc').kind, 'poll')
  assert.equal(timers.timers.length, 0) // no probing when forced
})
