// Yjs v1 updates and state vectors made by the real Yjs encoder, printed as JSON: every struct
// and content kind the encoder writes, merged updates with skips, diffs, pending structs.
//
//   node update_vectors.mjs > update_vectors.json
//
// Deterministic: fixed client ids. The Python tests check that collab.gate accepts each one as
// it is, summarises it as Yjs does (clocks per client, deletions), and refuses what it must.

import * as Y from 'yjs'

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const vectors = { updates: [], state_vectors: [] }

function newDoc (clientID, gc = true) {
  const doc = new Y.Doc({ gc })
  doc.clientID = clientID
  return doc
}

function add (name, update, { refused = null } = {}) {
  const { structs, ds } = Y.decodeUpdate(update)
  const clocks = {}
  for (const struct of structs) {
    const client = String(struct.id.client)
    const end = struct.id.clock + struct.length
    if (!(client in clocks)) clocks[client] = [struct.id.clock, end]
    clocks[client][1] = end
  }
  const deletes = {}
  for (const [client, items] of ds.clients) {
    deletes[String(client)] = Math.max(0, ...items.map((item) => item.clock + item.len))
  }
  vectors.updates.push({ name, hex: hex(update), clocks, deletes, refused })
}

// Every update a document emits while it is edited, then its whole state.
function record (name, doc, edit) {
  const updates = []
  const listener = (update) => updates.push(update)
  doc.on('update', listener)
  edit(doc)
  doc.off('update', listener)
  updates.forEach((update, i) => add(`${name}: update ${i + 1}`, update))
  add(`${name}: whole state`, Y.encodeStateAsUpdate(doc))
  return updates
}

// --- text: strings, deletions, formatting, embeds ----------------------------------------------

const text = newDoc(1)
const textUpdates = record('text', text, (doc) => {
  const t = doc.getText('text')
  t.insert(0, 'Hello, world')
  t.insert(5, ' there')
  t.delete(0, 2)
  t.insert(3, 'ünïcödé 日本語 🎉 emoji 👩‍💻 ') // astral characters count two clock units
  t.format(2, 6, { bold: true, color: '#ff0000' })
  t.insertEmbed(4, { image: 'https://example.com/a.png', size: [10, 20] })
  t.insert(t.length, 'tail', { italic: true })
  t.delete(6, 5)
})
add('text: state vector diff', Y.encodeStateAsUpdate(text, Y.encodeStateVectorFromUpdate(textUpdates[0])))

// --- the other shared types, with every kind of Any value ---------------------------------------

const types = newDoc(2)
record('types', types, (doc) => {
  const map = doc.getMap('map')
  map.set('number', 42)
  map.set('negative', -7)
  map.set('float', 3.25)
  map.set('large', 2 ** 40 + 1)
  map.set('bigint', 12345678901234567890n)
  map.set('flags', [true, false, null, undefined])
  map.set('nested', { a: { b: { c: [1, 2, { d: 'deep' }] } }, list: [[], {}] })
  map.set('bytes', new Uint8Array([0, 1, 2, 255]))
  map.set('string', 'a string value')
  map.set('number', 43) // overwrites: the old value is deleted
  const array = doc.getArray('array')
  array.insert(0, [1, 'two', { three: 3 }, [4], null])
  array.delete(1, 2)
  const nestedMap = new Y.Map()
  const nestedArray = new Y.Array()
  const nestedText = new Y.Text('inner text')
  array.push([nestedMap, nestedArray, nestedText])
  nestedMap.set('key', 'value')
  nestedArray.push(['x', 'y'])
  nestedText.insert(0, '>> ')
  const subdoc = new Y.Doc({ guid: 'sub-document' })
  map.set('subdoc', subdoc)
})

// --- XML, as rich-text editors use it ------------------------------------------------------------

const xml = newDoc(3)
record('xml', xml, (doc) => {
  const fragment = doc.getXmlFragment('prosemirror')
  const paragraph = new Y.XmlElement('paragraph')
  const heading = new Y.XmlElement('heading')
  fragment.insert(0, [heading, paragraph])
  heading.setAttribute('level', '2')
  const words = new Y.XmlText()
  paragraph.insert(0, [words])
  words.insert(0, 'some words')
  words.format(0, 4, { strong: {} })
  heading.insert(0, [new Y.XmlText('Title')])
  fragment.delete(0, 1) // a deleted type with children: collected into GC structs
})

// --- several clients, concurrent edits, merged updates with skips --------------------------------

const alice = newDoc(4294967295)
const bob = newDoc(123456789)
const aliceUpdates = []
const bobUpdates = []
alice.on('update', (u) => aliceUpdates.push(u))
bob.on('update', (u) => bobUpdates.push(u))
alice.getText('text').insert(0, 'alice ')
Y.applyUpdate(bob, Y.encodeStateAsUpdate(alice))
bob.getText('text').insert(6, 'bob ')
alice.getText('text').insert(0, '> ')
alice.getText('text').insert(2, '[a]')
bob.getText('text').delete(0, 2)
Y.applyUpdate(alice, Y.encodeStateAsUpdate(bob))
Y.applyUpdate(bob, Y.encodeStateAsUpdate(alice))
aliceUpdates.forEach((u, i) => add(`alice: update ${i + 1}`, u))
bobUpdates.forEach((u, i) => add(`bob: update ${i + 1}`, u))
add('two clients: whole state', Y.encodeStateAsUpdate(alice))
add('merged, with a gap (skip)', Y.mergeUpdates([aliceUpdates[0], aliceUpdates[2]]))
add('merged, everything', Y.mergeUpdates([...aliceUpdates, ...bobUpdates]))
add('diff against a state vector', Y.diffUpdate(Y.encodeStateAsUpdate(alice), Y.encodeStateVector(newDoc(9))))
add('diff of a merged update', Y.diffUpdate(Y.mergeUpdates(aliceUpdates), Y.encodeStateVectorFromUpdate(aliceUpdates[0])))

// A document holding a struct it cannot integrate yet writes it into its state anyway.
const pending = newDoc(5)
Y.applyUpdate(pending, aliceUpdates[1]) // depends on aliceUpdates[0]
add('state of a document with pending structs', Y.encodeStateAsUpdate(pending))

// Without garbage collection, deleted content stays (no GC structs, deleted items keep content).
const keep = newDoc(6, false)
record('no gc', keep, (doc) => {
  const t = doc.getText('text')
  t.insert(0, 'kept even when deleted')
  t.delete(0, 5)
  const array = doc.getArray('array')
  array.insert(0, [new Y.Map()])
  array.delete(0, 1)
})

// The empty update and state vector.
add('empty update', Y.encodeStateAsUpdate(newDoc(7)))

// Written by Yjs, read differently by the engine: refused.
const hook = newDoc(8)
hook.getXmlFragment('f').insert(0, [new Y.XmlHook('hook-name')])
add('xml hook', Y.encodeStateAsUpdate(hook), { refused: 'unsupported' })

// --- state vectors ---------------------------------------------------------------------------------

for (const [name, doc] of [['empty', newDoc(7)], ['text', text], ['two clients', alice], ['types', types]]) {
  const sv = Y.encodeStateVector(doc)
  vectors.state_vectors.push({
    name,
    hex: hex(sv),
    clocks: Object.fromEntries([...Y.decodeStateVector(sv)].map(([c, k]) => [String(c), k]))
  })
}

for (const doc of [text, types, xml, alice, bob, pending, keep, hook]) doc.destroy()
process.stdout.write(JSON.stringify(vectors, null, 1) + '\n')
