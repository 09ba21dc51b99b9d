// The page: the list of documents at the app's root, a document at d/<name>. index.html is the
// same for both (and is what the service worker keeps for offline use).

import { startEditor } from './editor-page.js'
import { startHome } from './home.js'
import { pageOf, workerUrl, workerScope } from './urls.js'
import './style.css'

/** Lets a reload during an outage bring the page back (the edits come from IndexedDB). */
const registerServiceWorker = () => {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return
  navigator.serviceWorker.register(workerUrl(), { scope: workerScope() }).catch((err) => {
    console.warn('collab: no offline page (service worker not registered):', err.message)
  })
}

const { room } = pageOf(location.pathname)
const start = room === null ? startHome() : startEditor(room)
start.then(registerServiceWorker).catch((err) => {
  console.error('collab: the page failed to start', err)
  const saved = document.getElementById('saved')
  if (room !== null && saved) {
    saved.dataset.state = 'error'
    saved.querySelector('.label').textContent = 'Failed to start — reload'
  }
})
