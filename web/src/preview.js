// The Markdown preview. A document is written by whoever has its link, so its HTML is hostile:
// markdown-it renders it (inline HTML allowed, as people expect of Markdown) and DOMPurify
// removes everything that could run or take over the page (scripts, event handlers,
// javascript: links, frames, forms, styles) before it reaches the DOM; the page's
// Content-Security-Policy refuses inline scripts as a second line.

import MarkdownIt from 'markdown-it'
import createDOMPurify from 'dompurify'

const markdown = new MarkdownIt({ html: true, linkify: true, breaks: true })

// HTML with an event-handler attribute is shown as text, not parsed. Not for safety (the
// sanitizer removes handlers, and the page's policy refuses to run them), but because the
// browser reports a policy violation as soon as it parses such an attribute, even in the inert
// document the sanitizer works in: a document's author could fill every reader's console.
const HANDLER = /\bon[a-z]+\s*=|\bon[a-z]+[\s/>]/i
for (const rule of ['html_block', 'html_inline']) {
  const render = markdown.renderer.rules[rule]
  markdown.renderer.rules[rule] = (tokens, index, options, env, self) =>
    HANDLER.test(tokens[index].content)
      ? markdown.utils.escapeHtml(tokens[index].content) + (rule === 'html_block' ? '\n' : '')
      : render(tokens, index, options, env, self)
}

// Each block remembers the source line it starts on, for scrolling the two panes together.
markdown.core.ruler.push('source_lines', (state) => {
  for (const token of state.tokens) {
    if (token.map && token.nesting === 1) token.attrSet('data-source-line', String(token.map[0]))
  }
})

const purify = createDOMPurify(window)
const SANITIZE = {
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'option', 'dialog', 'base', 'meta', 'link'],
  FORBID_ATTR: ['style', 'autofocus'],
  // ids and names from the document get a "user-content-" prefix: they cannot clobber the page's.
  SANITIZE_NAMED_PROPS: true,
  RETURN_DOM_FRAGMENT: true
}

purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href') && !node.getAttribute('href').startsWith('#')) {
    node.setAttribute('target', '_blank')
    node.setAttribute('rel', 'noopener noreferrer nofollow')
  }
  if (node.tagName === 'IMG') node.setAttribute('loading', 'lazy')
})

/** `text` as a sanitized DOM fragment. */
export const renderMarkdown = (text) => purify.sanitize(markdown.render(text), SANITIZE)

const RENDER_DELAY_MS = 120

/**
 * Keeps `container` showing `ytext` rendered, while `isShown()`; `render()` forces it now.
 */
export class Preview {
  constructor (ytext, container, isShown) {
    this.ytext = ytext
    this.container = container
    this.isShown = isShown
    this.timer = null
    this.rendered = null
    ytext.observe(() => this.schedule())
    container.addEventListener('click', (event) => this._followAnchor(event))
  }

  schedule () {
    if (this.timer !== null || !this.isShown()) return
    this.timer = setTimeout(() => {
      this.timer = null
      this.render()
    }, RENDER_DELAY_MS)
  }

  render () {
    const text = this.ytext.toString()
    if (text === this.rendered) return
    this.rendered = text
    if (text.trim() === '') {
      const empty = document.createElement('p')
      empty.className = 'preview-empty'
      empty.textContent = 'Nothing to preview yet. Headings (#), lists (-), **bold**, _italic_, `code` and [links](https://example.com) show here.'
      this.container.replaceChildren(empty)
    } else {
      this.container.replaceChildren(renderMarkdown(text))
    }
  }

  /** Links within the document (#section) scroll the preview instead of leaving the page. */
  _followAnchor (event) {
    const link = event.target.closest?.('a[href^="#"]')
    if (!link) return
    event.preventDefault()
    const id = decodeURIComponent(link.getAttribute('href').slice(1))
    const target = this.container.querySelector(`[id="user-content-${CSS.escape(id)}"], [name="user-content-${CSS.escape(id)}"]`)
    if (target) target.scrollIntoView({ block: 'start', behavior: 'smooth' })
  }
}

/**
 * Scroll the editor's pane and the preview's pane together, matched by source line: whichever
 * pane the person scrolls leads, the other follows.
 */
export const linkScrolling = (view, editorPane, previewPane, preview, isSplit) => {
  const expected = new Map() // pane -> scrollTop we set, so its scroll event is not taken as a lead

  const set = (pane, top) => {
    const value = Math.max(0, Math.round(top))
    if (Math.abs(pane.scrollTop - value) < 2) return
    expected.set(pane, value)
    pane.scrollTop = value
  }

  const anchors = () => [...preview.querySelectorAll('[data-source-line]')].map(node => ({
    line: Number(node.dataset.sourceLine),
    top: node.getBoundingClientRect().top - previewPane.getBoundingClientRect().top + previewPane.scrollTop
  })).sort((a, b) => a.line - b.line || a.top - b.top)

  const editorOffset = () => view.documentTop - editorPane.getBoundingClientRect().top + editorPane.scrollTop

  /** The editor's top line, fractional, 0-based. */
  const editorLine = () => {
    const y = Math.max(0, editorPane.scrollTop - editorOffset())
    const block = view.lineBlockAtHeight(y)
    const line = view.state.doc.lineAt(block.from).number - 1
    return line + Math.min(1, Math.max(0, (y - block.top) / Math.max(1, block.height)))
  }

  const editorTopOf = (line) => {
    const doc = view.state.doc
    const whole = Math.min(doc.lines, Math.floor(line) + 1)
    const block = view.lineBlockAt(doc.line(whole).from)
    return editorOffset() + block.top + (line - Math.floor(line)) * block.height
  }

  const follow = (from) => {
    if (!isSplit()) return
    if (expected.has(from)) {
      const wanted = expected.get(from)
      expected.delete(from)
      if (Math.abs(from.scrollTop - wanted) < 2) return
    }
    const marks = anchors()
    if (marks.length === 0) return
    if (from === editorPane) {
      if (editorPane.scrollTop <= 0) return set(previewPane, 0)
      const line = editorLine()
      let i = marks.findLastIndex(m => m.line <= line)
      if (i < 0) i = 0
      const a = marks[i]
      const b = marks[i + 1]
      const top = b ? a.top + (b.top - a.top) * Math.min(1, (line - a.line) / Math.max(1, b.line - a.line)) : a.top
      set(previewPane, top - 16)
    } else {
      if (previewPane.scrollTop <= 0) return set(editorPane, 0)
      const y = previewPane.scrollTop + 16
      let i = marks.findLastIndex(m => m.top <= y)
      if (i < 0) i = 0
      const a = marks[i]
      const b = marks[i + 1]
      const line = b ? a.line + (b.line - a.line) * Math.min(1, (y - a.top) / Math.max(1, b.top - a.top)) : a.line
      set(editorPane, editorTopOf(line))
    }
  }
  editorPane.addEventListener('scroll', () => follow(editorPane), { passive: true })
  previewPane.addEventListener('scroll', () => follow(previewPane), { passive: true })
}
