// Remote cursors and selections, adapted from y-codemirror.next's y-remote-selections.js
// (MIT License, Copyright (c) 2024 Kevin Jahns). Changes: a caret widget compares the person's
// name as well as their colour, so renaming yourself updates the label on your cursor in
// everyone else's editor (the stock widget kept showing the old name); and the names beside
// the carets are drawn in a layer of their own (yRemoteLabels, below) that places them so that
// they never cover each other. The stock label inside the caret stays, shown on hover.

import * as cmView from '@codemirror/view'
import { layer } from '@codemirror/view'

import * as cmState from '@codemirror/state'
import * as dom from 'lib0/dom'
import * as pair from 'lib0/pair'
import * as math from 'lib0/math'

import * as Y from 'yjs'
import { ySyncFacet } from 'y-codemirror.next'
import { safeColour, lightColour } from './names.js'

export const yRemoteSelectionsTheme = cmView.EditorView.baseTheme({
  '.cm-ySelection': {
  },
  '.cm-yLineSelection': {
    padding: 0,
    margin: '0px 2px 0px 4px'
  },
  '.cm-ySelectionCaret': {
    position: 'relative',
    borderLeft: '1px solid black',
    borderRight: '1px solid black',
    marginLeft: '-1px',
    marginRight: '-1px',
    boxSizing: 'border-box',
    display: 'inline'
  },
  '.cm-ySelectionCaretDot': {
    borderRadius: '50%',
    position: 'absolute',
    width: '.4em',
    height: '.4em',
    top: '-.2em',
    left: '-.2em',
    backgroundColor: 'inherit',
    transition: 'transform .3s ease-in-out',
    boxSizing: 'border-box'
  },
  '.cm-ySelectionCaret:hover > .cm-ySelectionCaretDot': {
    transformOrigin: 'bottom center',
    transform: 'scale(0)'
  },
  '.cm-ySelectionInfo': {
    position: 'absolute',
    top: '-1.05em',
    left: '-1px',
    fontSize: '.75em',
    fontFamily: 'serif',
    fontStyle: 'normal',
    fontWeight: 'normal',
    lineHeight: 'normal',
    userSelect: 'none',
    color: 'white',
    paddingLeft: '2px',
    paddingRight: '2px',
    zIndex: 101,
    transition: 'opacity .3s ease-in-out',
    backgroundColor: 'inherit',
    // these should be separate
    opacity: 0,
    transitionDelay: '0s',
    whiteSpace: 'nowrap'
  },
  '.cm-ySelectionCaret:hover > .cm-ySelectionInfo': {
    opacity: 1,
    transitionDelay: '0s'
  }
})

/**
 * @todo specify the users that actually changed. Currently, we recalculate positions for every user.
 * @type {cmState.AnnotationType<Array<number>>}
 */
const yRemoteSelectionsAnnotation = cmState.Annotation.define()

class YRemoteCaretWidget extends cmView.WidgetType {
  /**
   * @param {string} color
   * @param {string} name
   */
  constructor (color, name) {
    super()
    this.color = color
    this.name = name
  }

  toDOM () {
    return /** @type {HTMLElement} */ (dom.element('span', [pair.create('class', 'cm-ySelectionCaret'), pair.create('style', `background-color: ${this.color}; border-color: ${this.color}`)], [
      dom.text('\u2060'),
      dom.element('div', [
        pair.create('class', 'cm-ySelectionCaretDot')
      ]),
      dom.text('\u2060'),
      dom.element('div', [
        pair.create('class', 'cm-ySelectionInfo')
      ], [
        dom.text(this.name)
      ]),
      dom.text('\u2060')
    ]))
  }

  eq (widget) {
    return widget.color === this.color && widget.name === this.name
  }

  compare (widget) {
    return widget.color === this.color && widget.name === this.name
  }

  updateDOM () {
    return false
  }

  get estimatedHeight () { return -1 }

  ignoreEvent () {
    return true
  }
}

export class YRemoteSelectionsPluginValue {
  /**
   * @param {cmView.EditorView} view
   */
  constructor (view) {
    this.conf = view.state.facet(ySyncFacet)
    this._listener = ({ added, updated, removed }, s, t) => {
      const clients = added.concat(updated).concat(removed)
      const moved = activity(this.conf.awareness)
      const now = Date.now()
      for (const id of added.concat(updated)) moved.set(id, now)
      for (const id of removed) moved.delete(id)
      if (clients.findIndex(id => id !== this.conf.awareness.doc.clientID) >= 0) {
        view.dispatch({ annotations: [yRemoteSelectionsAnnotation.of([])] })
      }
    }
    this._awareness = this.conf.awareness
    this._awareness.on('change', this._listener)
    /**
     * @type {cmView.DecorationSet}
     */
    this.decorations = cmState.RangeSet.of([])
  }

  destroy () {
    this._awareness.off('change', this._listener)
  }

  /**
   * @param {cmView.ViewUpdate} update
   */
  update (update) {
    const ytext = this.conf.ytext
    const ydoc = /** @type {Y.Doc} */ (ytext.doc)
    const awareness = this.conf.awareness
    /**
     * @type {Array<cmState.Range<cmView.Decoration>>}
     */
    const decorations = []
    const localAwarenessState = this.conf.awareness.getLocalState()

    // set local awareness state (update cursors)
    if (localAwarenessState != null) {
      const hasFocus = update.view.hasFocus && update.view.dom.ownerDocument.hasFocus()
      const sel = hasFocus ? update.state.selection.main : null
      const currentAnchor = localAwarenessState.cursor == null ? null : Y.createRelativePositionFromJSON(localAwarenessState.cursor.anchor)
      const currentHead = localAwarenessState.cursor == null ? null : Y.createRelativePositionFromJSON(localAwarenessState.cursor.head)

      if (sel != null) {
        const anchor = Y.createRelativePositionFromTypeIndex(ytext, sel.anchor)
        const head = Y.createRelativePositionFromTypeIndex(ytext, sel.head)
        if (localAwarenessState.cursor == null || !Y.compareRelativePositions(currentAnchor, anchor) || !Y.compareRelativePositions(currentHead, head)) {
          awareness.setLocalStateField('cursor', {
            anchor,
            head
          })
        }
      } else if (localAwarenessState.cursor != null && hasFocus) {
        awareness.setLocalStateField('cursor', null)
      }
    }

    // update decorations (remote selections)
    awareness.getStates().forEach((state, clientid) => {
      if (clientid === awareness.doc.clientID) {
        return
      }
      const cursor = state.cursor
      if (cursor == null || cursor.anchor == null || cursor.head == null) {
        return
      }
      const anchor = Y.createAbsolutePositionFromRelativePosition(cursor.anchor, ydoc)
      const head = Y.createAbsolutePositionFromRelativePosition(cursor.head, ydoc)
      if (anchor == null || head == null || anchor.type !== ytext || head.type !== ytext) {
        return
      }
      const color = safeColour(state.user?.color, '#30bced')
      const name = String(state.user?.name ?? 'Anonymous')
      const colorLight = lightColour(color)
      const start = math.min(anchor.index, head.index)
      const end = math.max(anchor.index, head.index)
      const startLine = update.view.state.doc.lineAt(start)
      const endLine = update.view.state.doc.lineAt(end)
      if (startLine.number === endLine.number) {
        // selected content in a single line.
        decorations.push({
          from: start,
          to: end,
          value: cmView.Decoration.mark({
            attributes: { style: `background-color: ${colorLight}` },
            class: 'cm-ySelection'
          })
        })
      } else {
        // selected content in multiple lines
        // first, render text-selection in the first line
        decorations.push({
          from: start,
          to: startLine.from + startLine.length,
          value: cmView.Decoration.mark({
            attributes: { style: `background-color: ${colorLight}` },
            class: 'cm-ySelection'
          })
        })
        // render text-selection in the last line
        decorations.push({
          from: endLine.from,
          to: end,
          value: cmView.Decoration.mark({
            attributes: { style: `background-color: ${colorLight}` },
            class: 'cm-ySelection'
          })
        })
        for (let i = startLine.number + 1; i < endLine.number; i++) {
          const linePos = update.view.state.doc.line(i).from
          decorations.push({
            from: linePos,
            to: linePos,
            value: cmView.Decoration.line({
              attributes: { style: `background-color: ${colorLight}`, class: 'cm-yLineSelection' }
            })
          })
        }
      }
      decorations.push({
        from: head.index,
        to: head.index,
        value: cmView.Decoration.widget({
          // The local cursor should be rendered outside the remote selection; an empty one goes
          // before other widgets at its place (the placeholder of an empty document).
          side: head.index - anchor.index >= 0 ? -1 : 1,
          block: false,
          widget: new YRemoteCaretWidget(color, name)
        })
      })
    })
    this.decorations = cmView.Decoration.set(decorations, true)
  }
}

export const yRemoteSelections = cmView.ViewPlugin.fromClass(YRemoteSelectionsPluginValue, {
  decorations: v => v.decorations
})

// --- labels ------------------------------------------------------------------------------------

const LABEL_HEIGHT = 16
const LABEL_PADDING = 10
const LABEL_GAP = 2

/** When each person's presence last changed (their cursor moved, mostly), per awareness. */
const lastMoved = new WeakMap()
const activity = (awareness) => {
  if (!lastMoved.has(awareness)) lastMoved.set(awareness, new Map())
  return lastMoved.get(awareness)
}

const overlaps = (a, b, gap) =>
  a.left < b.right + gap && b.left < a.right + gap && a.top < b.bottom + gap && b.top < a.bottom + gap

/**
 * Where each caret's label goes, so that no two overlap: above the caret if free, else below
 * the caret's line, else nowhere (the name still shows on hover). `carets` are in priority order
 * (the one who moved last first), each {id, x, top, bottom, width, height}; labels are kept
 * within [minX, maxX]. Returns Map id -> {left, top, right, bottom, below}.
 */
export const placeLabels = (carets, minX, maxX, gap = LABEL_GAP) => {
  const placed = new Map()
  for (const caret of carets) {
    const left = Math.max(minX, Math.min(caret.x, maxX - caret.width))
    for (const below of [false, true]) {
      const top = below ? caret.bottom : caret.top - caret.height
      const box = { left, top, right: left + caret.width, bottom: top + caret.height, below }
      if (![...placed.values()].some(other => overlaps(other, box, gap))) {
        placed.set(caret.id, box)
        break
      }
    }
  }
  return placed
}

class LabelMarker {
  constructor (clientId, name, color, left, top, below) {
    this.clientId = clientId
    this.name = name
    this.color = color
    this.left = left
    this.top = top
    this.below = below
  }

  draw () {
    const node = document.createElement('div')
    this.adjust(node)
    return node
  }

  update (node) {
    this.adjust(node)
    return true
  }

  adjust (node) {
    node.className = this.below ? 'cm-yLabel cm-yLabel-below' : 'cm-yLabel'
    node.dataset.clientId = String(this.clientId)
    if (node.textContent !== this.name) node.textContent = this.name
    node.style.backgroundColor = this.color
    node.style.left = `${this.left}px`
    node.style.top = `${this.top}px`
  }

  eq (other) {
    return other.clientId === this.clientId && other.name === this.name && other.color === this.color &&
      other.left === this.left && other.top === this.top && other.below === this.below
  }
}

const widths = new Map()
let measureContext = null

/** A label's width for `name`, measured once per name in the labels' font. */
const labelWidth = (name) => {
  if (!widths.has(name)) {
    if (measureContext === null) {
      measureContext = document.createElement('canvas').getContext('2d')
      measureContext.font = `600 11px ${getComputedStyle(document.body).fontFamily}`
    }
    widths.set(name, Math.ceil(measureContext.measureText(name).width) + LABEL_PADDING)
  }
  return widths.get(name)
}

const labelMarkers = (view) => {
  const conf = view.state.facet(ySyncFacet)
  const { ytext, awareness } = conf
  const ydoc = ytext.doc
  const moved = activity(awareness)
  const scroller = view.scrollDOM.getBoundingClientRect()
  const baseLeft = scroller.left - view.scrollDOM.scrollLeft * view.scaleX
  const baseTop = scroller.top - view.scrollDOM.scrollTop * view.scaleY
  const content = view.contentDOM.getBoundingClientRect()
  const carets = []
  awareness.getStates().forEach((state, clientId) => {
    if (clientId === ydoc.clientID || !state.cursor?.head) return
    const head = Y.createAbsolutePositionFromRelativePosition(state.cursor.head, ydoc)
    if (head === null || head.type !== ytext || head.index > view.state.doc.length) return
    const coords = view.coordsAtPos(head.index, 1) ?? view.coordsAtPos(head.index, -1)
    if (coords === null) return
    const name = String(state.user?.name ?? 'Anonymous')
    carets.push({
      id: clientId,
      name,
      color: safeColour(state.user?.color, '#30bced'),
      x: coords.left - 1,
      top: coords.top,
      bottom: coords.bottom,
      width: labelWidth(name),
      height: LABEL_HEIGHT,
      at: moved.get(clientId) ?? 0
    })
  })
  carets.sort((a, b) => b.at - a.at || a.id - b.id)
  const placed = placeLabels(carets, content.left, content.right)
  return carets.filter(c => placed.has(c.id)).map(c => {
    const box = placed.get(c.id)
    return new LabelMarker(c.id, c.name, c.color, box.left - baseLeft, box.top - baseTop, box.below)
  })
}

/** People's names beside their carets, never on top of each other. */
export const yRemoteLabels = layer({
  above: true,
  class: 'cm-yLabels',
  markers: labelMarkers,
  update: (update) => update.docChanged || update.viewportChanged || update.geometryChanged ||
    update.transactions.some(tr => tr.annotation(yRemoteSelectionsAnnotation) !== undefined)
})
