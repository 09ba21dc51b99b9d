// The service worker keeps the pages themselves available while the server is unreachable, so
// that reloading a tab during an outage brings back the page and, from IndexedDB, the edits (and
// the list of documents, which lives in this browser).
// Pages: network first (a new deploy shows at once), the cached shell when the network fails.
// Hashed assets: cache first, they never change. build.mjs fills in the two constants.
// Every path is relative to the worker's scope, the app's root, wherever it is mounted.

const VERSION = '__VERSION__'
const ASSETS = __ASSETS__
const CACHE = `collab-${VERSION}`
const ROOT = new URL('./', self.location.href).href
// The home page and every d/<name> page are the same HTML; it is kept once under this key.
const SHELL = new URL('d/', ROOT).href

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE)
    await cache.addAll([...ASSETS.map(path => new URL(path, ROOT).href), SHELL])
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

const page = async (request) => {
  try {
    const response = await fetch(request)
    if (response.ok && !response.redirected) {
      const cache = await caches.open(CACHE)
      await cache.put(SHELL, response.clone())
    }
    return response
  } catch (err) {
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
  if (request.method !== 'GET' || !request.url.startsWith(ROOT)) return
  const path = new URL(request.url).pathname.slice(new URL(ROOT).pathname.length)
  if (request.mode === 'navigate' && (path === '' || path.startsWith('d/'))) {
    event.respondWith(page(request))
  } else if (path.startsWith('assets/')) {
    event.respondWith(asset(request))
  }
})
