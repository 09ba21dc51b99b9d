// The share panel of a document page. With a server that signs tokens it makes links on the
// server (POST api/docs/<room>/share: the browser cannot mint tokens), for editing or for reading
// only, with the expiry the sharer picks; the server never makes one longer-lived or wider than
// the sharer's own access. An open server has no such links: the page's own link lets anyone edit.

import { EXPIRIES, shareLink } from './access.js'
import { $, el, showToast, popover, fullTime } from './ui.js'
import { apiUrl, documentUrl } from './urls.js'

const EXPIRY_KEY = 'collab:share-expiry'

/** The expiry choices that fit within `maxTtl` seconds, and the one to preselect. */
export const expiryChoices = (maxTtl, remembered = null) => {
  const fitting = EXPIRIES.filter(e => e.seconds <= maxTtl)
  const choices = fitting.length > 0 ? fitting : [{ seconds: Math.max(1, Math.floor(maxTtl)), label: 'until your own access ends' }]
  const chosen = choices.find(e => e.seconds === remembered) ?? choices.find(e => e.seconds === 86400) ?? choices.at(-1)
  return { choices, chosen: chosen.seconds }
}

/** Put `text` on the clipboard; where the page may not, the link field is selected to copy. */
const copy = async (text) => {
  try {
    await navigator.clipboard.writeText(text)
    return true
  } catch {
    return false
  }
}

export class SharePanel {
  /** @param {{room: string, tokens: import('./access.js').Tokens, title: () => string}} options */
  constructor ({ room, tokens, title }) {
    this.room = room
    this.tokens = tokens
    this.title = title
    this.terms = null
    this.panel = $('share-panel')
    this.popover = popover($('copy-link'), this.panel, { onOpen: () => this.refresh() })
    $('share-edit').addEventListener('click', () => this.make('write'))
    $('share-read').addEventListener('click', () => this.make('read'))
    $('share-plain').addEventListener('click', () => this.deliver(documentUrl(this.room), 'Link copied: anyone with it can edit'))
    $('share-expiry').addEventListener('change', () => localStorage.setItem(EXPIRY_KEY, $('share-expiry').value))
  }

  /** Ask the server what it can share (GET api/docs/<room>/share) and show that. */
  async refresh () {
    $('share-url').hidden = true
    $('share-note').hidden = true
    let terms = null
    try {
      const response = await fetch(apiUrl(`api/docs/${this.room}/share`), { cache: 'no-store', headers: this.tokens.headers(this.room) })
      if (response.ok) terms = await response.json()
    } catch {}
    this.terms = terms
    this.show(terms)
  }

  show (terms) {
    const status = $('share-status')
    $('share-signed').hidden = true
    $('share-plain').hidden = true
    if (terms === null) {
      status.textContent = 'Sharing needs the server: try again once connected.'
    } else if (!terms.signed) {
      status.textContent = 'This server has no secret: anyone with the link can read and edit.'
      $('share-plain').hidden = false
    } else if (!terms.may_share) {
      status.textContent = 'You can read this document; only people who can edit it may share it.'
    } else {
      status.textContent = 'An edit link lets people change it; a read-only link lets them read it and see who is here.'
      const remembered = Number(localStorage.getItem(EXPIRY_KEY)) || null
      const { choices, chosen } = expiryChoices(terms.max_ttl, remembered)
      $('share-expiry').replaceChildren(...choices.map(c => el('option', { value: String(c.seconds) }, c.label)))
      $('share-expiry').value = String(chosen)
      $('share-signed').hidden = false
    }
    this.panel.dataset.state = terms === null ? 'unreachable' : !terms.signed ? 'open' : terms.may_share ? 'signed' : 'read-only'
  }

  /** Have the server make a link's token, then give the link to the sharer. */
  async make (mode) {
    const ttl = Number($('share-expiry').value)
    let answer = null
    let problem = 'The server could not make the link; try again.'
    try {
      const response = await fetch(apiUrl(`api/docs/${this.room}/share`), {
        method: 'POST',
        cache: 'no-store',
        headers: { 'Content-Type': 'application/json', ...this.tokens.headers(this.room) },
        body: JSON.stringify({ mode, ttl })
      })
      if (response.ok) answer = await response.json()
      else problem = (await response.text()).trim() || problem
    } catch {
      problem = 'Sharing needs the server: try again once connected.'
    }
    if (answer === null || typeof answer.token !== 'string') {
      showToast(problem, { ms: 4000 })
      return
    }
    const until = fullTime(Date.parse(answer.expires))
    const what = mode === 'read' ? 'Read-only link' : 'Edit link'
    this.deliver(shareLink(documentUrl(this.room), answer.token), `${what} copied · valid until ${until}`,
      answer.shortened ? `Valid until ${until}, when your own access ends.` : null, mode)
  }

  async deliver (link, message, note = null, mode = 'write') {
    const field = $('share-url')
    field.value = link
    field.dataset.mode = mode
    field.hidden = false
    const copied = await copy(link)
    if (copied) {
      showToast(message)
    } else {
      field.focus()
      field.select()
      showToast('Copy the selected link')
    }
    $('share-note').hidden = note === null
    $('share-note').textContent = note ?? ''
  }
}
