// The service worker keeps the editor page itself available while the server is unreachable,
// so that reloading a tab during an outage brings back the page and, from IndexedDB, the edits.
// Pages: network first (a new deploy shows at once), the cached shell when the network fails.
// Hashed assets: cache first, they never change. build.mjs fills in the two constants.

const VERSION = '__VERSION__'
const ASSETS = __ASSETS__
const CACHE = `collab-${VERSION}`
// Every /d/<name> page is the same HTML; it is kept once under this key.
const SHELL = '/d/'

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE)
    await cache.addAll([...ASSETS, SHELL])
    await self.skipWaiting()
  })())
})

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith('collab-') && key !== CACHE) await caches.delete(key)
    }
    await self.clients.claim()
  })())
})

const ADJECTIVES = ['amber', 'brisk', 'calm', 'coral', 'eager', 'gentle', 'golden', 'lively', 'misty', 'sunny']
const ANIMALS = ['badger', 'crane', 'falcon', 'heron', 'lynx', 'otter', 'owl', 'puffin', 'raven', 'wren']
const pick = (list) => list[Math.floor(Math.random() * list.length)]

const page = async (request, url) => {
  try {
    const response = await fetch(request)
    if (response.ok && url.pathname.startsWith('/d/')) {
      const cache = await caches.open(CACHE)
      await cache.put(SHELL, response.clone())
    }
    return response
  } catch (err) {
    if (url.pathname === '/') {
      // Offline landing: make the new document's name here; it syncs once the server is back.
      const name = `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${Math.floor(Math.random() * 9000) + 1000}`
      return Response.redirect(`/d/${name}`, 302)
    }
    const cached = await caches.match(SHELL)
    if (cached) return cached
    throw err
  }
}

const asset = async (request) => {
  const cached = await caches.match(request)
  if (cached) return cached
  const response = await fetch(request)
  if (response.ok) {
    const cache = await caches.open(CACHE)
    await cache.put(request, response.clone())
  }
  return response
}

self.addEventListener('fetch', (event) => {
  const request = event.request
  if (request.method !== 'GET') return
  const url = new URL(request.url)
  if (url.origin !== self.location.origin) return
  if (request.mode === 'navigate' && (url.pathname === '/' || url.pathname.startsWith('/d/'))) {
    event.respondWith(page(request, url))
  } else if (url.pathname.startsWith('/assets/')) {
    event.respondWith(asset(request))
  }
})
