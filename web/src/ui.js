// Small pieces of page chrome shared by the home page and the editor page.

export const $ = (id) => document.getElementById(id)

export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value
    else if (key === 'dataset') Object.assign(node.dataset, value)
    else if (key in node && typeof value !== 'string') node[key] = value
    else node.setAttribute(key, value)
  }
  node.append(...children.filter(c => c !== null && c !== undefined && c !== false))
  return node
}

export const showToast = (() => {
  let timer = null
  return (message, { action = null, ms = 2200 } = {}) => {
    const toast = $('toast')
    toast.replaceChildren(el('span', {}, message))
    if (action) {
      const button = el('button', { class: 'link toast-action', type: 'button' }, action.label)
      button.addEventListener('click', () => { toast.hidden = true; action.run() })
      toast.append(button)
    }
    toast.hidden = false
    clearTimeout(timer)
    timer = setTimeout(() => { toast.hidden = true }, action ? ms * 2 : ms)
  }
})()

const openPopovers = new Set()
let dismissing = false

/** One set of listeners for all popovers: a click elsewhere, Escape or a resize closes them. */
const dismissOnOutsideEvents = () => {
  if (dismissing) return
  dismissing = true
  const closeAll = () => { for (const close of [...openPopovers]) close() }
  document.addEventListener('click', closeAll)
  document.addEventListener('keydown', (event) => { if (event.key === 'Escape') closeAll() })
  window.addEventListener('resize', closeAll)
}

/** A button that opens `panel` below it; a click elsewhere or Escape closes it. */
export const popover = (button, panel, { onOpen = () => {} } = {}) => {
  dismissOnOutsideEvents()
  const close = () => {
    if (panel.hidden) return
    panel.hidden = true
    button.setAttribute('aria-expanded', 'false')
    openPopovers.delete(close)
  }
  const open = () => {
    for (const other of [...openPopovers]) other()
    panel.hidden = false
    button.setAttribute('aria-expanded', 'true')
    openPopovers.add(close)
    onOpen()
    place(button, panel)
  }
  button.addEventListener('click', (event) => {
    event.stopPropagation()
    if (panel.hidden) open()
    else close()
  })
  panel.addEventListener('click', (event) => event.stopPropagation())
  return { open, close }
}

/** Below the button, right-aligned to it, kept inside the window. */
const place = (button, panel) => {
  const b = button.getBoundingClientRect()
  const width = panel.offsetWidth
  const left = Math.max(8, Math.min(b.right - width, window.innerWidth - width - 8))
  panel.style.left = `${left}px`
  panel.style.top = `${b.bottom + 6}px`
}


/** Keep `node` in `wide` while `query` does not match and in `narrow` while it does: one
 * element (one input, one set of listeners) that moves between the header and a menu. */
export const placeResponsively = (node, wide, narrow, query) => {
  const media = window.matchMedia(query)
  const put = () => (media.matches ? narrow : wide).append(node)
  media.addEventListener('change', put)
  put()
  return media
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' })
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' })

/** "just now", "5 minutes ago", "yesterday", then a date. */
export const timeAgo = (ms, now = Date.now()) => {
  const seconds = Math.round((ms - now) / 1000)
  const abs = Math.abs(seconds)
  if (abs < 45) return 'just now'
  if (abs < 3600) return relative.format(Math.round(seconds / 60), 'minute')
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), 'hour')
  if (abs < 7 * 86400) return relative.format(Math.round(seconds / 86400), 'day')
  return dateOnly.format(ms)
}

export const fullTime = (ms) => dateTime.format(ms)

/** A room name as people read it (the link holds it percent-encoded). */
export const displayName = (room) => {
  try {
    return decodeURIComponent(room)
  } catch {
    return room
  }
}
