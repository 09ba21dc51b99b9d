// The CodeMirror editor: Markdown, styled like a document rather than code (headings larger,
// emphasis shown, the markup characters faint), shared with Yjs. "Source view" switches to
// monospace with line numbers, for those who want the plain file.

import * as Y from 'yjs'
import {
  EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection,
  dropCursor, highlightSpecialChars, placeholder, rectangularSelection
} from '@codemirror/view'
import { EditorState, Compartment, Prec } from '@codemirror/state'
import { defaultKeymap, indentWithTab } from '@codemirror/commands'
import { searchKeymap, highlightSelectionMatches } from '@codemirror/search'
import { markdownLanguage, markdownKeymap, pasteURLAsLink } from '@codemirror/lang-markdown'
import { HighlightStyle, LanguageSupport, syntaxHighlighting } from '@codemirror/language'
import { tags } from '@lezer/highlight'
import {
  yCollab, yUndoManagerKeymap, yRemoteSelections as stockSelections,
  yRemoteSelectionsTheme as stockSelectionsTheme
} from 'y-codemirror.next'

import { yRemoteSelections, yRemoteSelectionsTheme, yRemoteLabels } from './remote-selections.js'

/** GitHub-flavoured Markdown with its keys (Enter continues a list or a quote, Backspace undoes
 * the markup) and pasting a URL over a selection makes a link. Not lang-markdown's markdown(),
 * which brings an HTML, CSS and JavaScript parser for HTML inside Markdown (140 KiB more). */
const markdownSupport = () => new LanguageSupport(markdownLanguage, [
  Prec.high(keymap.of(markdownKeymap)),
  pasteURLAsLink
])

/** Classes only: the look is in style.css, where source view overrides it. */
const markdownStyle = HighlightStyle.define([
  { tag: tags.heading1, class: 'md-h md-h1' },
  { tag: tags.heading2, class: 'md-h md-h2' },
  { tag: tags.heading3, class: 'md-h md-h3' },
  { tag: [tags.heading4, tags.heading5, tags.heading6], class: 'md-h md-h4' },
  { tag: tags.strong, class: 'md-strong' },
  { tag: tags.emphasis, class: 'md-em' },
  { tag: tags.strikethrough, class: 'md-strike' },
  { tag: tags.link, class: 'md-link' },
  { tag: tags.url, class: 'md-url' },
  { tag: tags.monospace, class: 'md-code' },
  { tag: tags.quote, class: 'md-quote' },
  { tag: [tags.processingInstruction, tags.contentSeparator], class: 'md-mark' },
  { tag: [tags.labelName, tags.string], class: 'md-meta' },
  { tag: [tags.comment], class: 'md-comment' },
  { tag: [tags.angleBracket, tags.tagName, tags.attributeName, tags.attributeValue], class: 'md-html' }
])

const theme = EditorView.theme({
  '&': { backgroundColor: 'transparent', color: 'var(--ink)' },
  '.cm-scroller': { fontFamily: 'var(--doc-font)', lineHeight: 'var(--doc-leading)', overflow: 'visible' },
  '.cm-content': { padding: '0', caretColor: 'var(--accent)' },
  '.cm-line': { padding: '0' },
  '.cm-gutters': {
    backgroundColor: 'transparent', color: 'var(--faint)', border: 'none', marginRight: '14px'
  },
  '.cm-activeLine': { backgroundColor: 'transparent' },
  '.cm-activeLineGutter': { backgroundColor: 'transparent', color: 'var(--muted)' },
  '&.cm-focused': { outline: 'none' },
  '&.cm-focused .cm-cursor': { borderLeftColor: 'var(--accent)', borderLeftWidth: '2px' },
  '.cm-selectionBackground, &.cm-focused .cm-selectionBackground, ::selection': {
    backgroundColor: 'var(--selection) !important'
  },
  '.cm-placeholder': { color: 'var(--faint)', fontStyle: 'normal' },
  '.cm-ySelectionInfo': {
    fontFamily: 'var(--sans)', fontSize: '11px', fontWeight: '600', padding: '0 5px',
    lineHeight: '16px', borderRadius: '4px 4px 4px 0', top: '-16px'
  },
  '.cm-panels': { backgroundColor: 'var(--chrome)', color: 'var(--ink)' }
})

export class Editor {
  /**
   * @param {HTMLElement} parent
   * @param {Y.Text} ytext
   * @param {import('y-protocols/awareness').Awareness} awareness
   * @param {{source: boolean, onChange: (view: EditorView) => void}} options
   */
  constructor (parent, ytext, awareness, { source = false, onChange = () => {} } = {}) {
    this.parent = parent
    this.gutter = new Compartment()
    this.writable = new Compartment()
    const undoManager = new Y.UndoManager(ytext)
    this.undoManager = undoManager
    this.view = new EditorView({
      parent,
      state: EditorState.create({
        doc: ytext.toString(),
        extensions: [
          this.gutter.of(this._gutter(source)),
          this.writable.of(this._writable(true)),
          highlightActiveLine(),
          highlightSpecialChars(),
          drawSelection(),
          dropCursor(),
          rectangularSelection(),
          highlightSelectionMatches(),
          EditorView.lineWrapping,
          // Yjs counts "\r\n" as two characters; so must the editor, or positions drift apart.
          EditorState.lineSeparator.of('\n'),
          EditorState.allowMultipleSelections.of(true),
          EditorView.contentAttributes.of({ spellcheck: 'true', autocorrect: 'on', 'aria-label': 'Document text' }),
          markdownSupport(),
          syntaxHighlighting(markdownStyle),
          placeholder('Start writing. Everyone with the link writes here with you.'),
          keymap.of([...yUndoManagerKeymap, ...searchKeymap, ...defaultKeymap, indentWithTab]),
          yCollab(ytext, awareness, { undoManager })
            .filter(ext => ext !== stockSelections && ext !== stockSelectionsTheme),
          yRemoteSelectionsTheme,
          yRemoteSelections,
          yRemoteLabels,
          theme,
          EditorView.updateListener.of((update) => {
            if (update.docChanged || update.selectionSet) onChange(update.view)
          })
        ]
      })
    })
    this.setSource(source)
  }

  _gutter (source) {
    return source ? [lineNumbers(), highlightActiveLineGutter()] : []
  }

  _writable (writable) {
    return [EditorState.readOnly.of(!writable), EditorView.editable.of(writable)]
  }

  /** Read-only: the text can be read, selected and copied, not changed. */
  setWritable (writable) {
    this.view.dispatch({ effects: this.writable.reconfigure(this._writable(writable)) })
  }

  /** Monospace with line numbers, or the document look. */
  setSource (source) {
    this.parent.classList.toggle('source', source)
    this.view.dispatch({ effects: this.gutter.reconfigure(this._gutter(source)) })
  }

  /** The selected text (all ranges), for counting. */
  selectedText () {
    const { state } = this.view
    return state.selection.ranges.filter(r => !r.empty).map(r => state.sliceDoc(r.from, r.to)).join('\n')
  }
}
