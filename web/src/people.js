// Who else is here: the first few as avatars in the header, the rest as "+N", and everyone in
// a list that opens on click (where a person's name also takes you to their cursor).

import * as Y from 'yjs'
import { initials, safeColour } from './names.js'
import { el, popover } from './ui.js'

/** The people in `awareness` other than this tab, in a stable order (by name, then id). */
export const othersIn = (awareness) => {
  const people = []
  awareness.getStates().forEach((state, clientId) => {
    if (clientId !== awareness.clientID && state && state.user) {
      people.push({
        clientId,
        name: String(state.user.name || 'Anonymous'),
        color: safeColour(state.user.color),
        cursor: state.cursor ?? null
      })
    }
  })
  return people.sort((a, b) => a.name.localeCompare(b.name) || a.clientId - b.clientId)
}

/** How many avatars fit before "+N": all of them when `max` or fewer, else `max - 1` and "+N". */
export const split = (people, max) =>
  people.length <= max ? { shown: people, hidden: [] } : { shown: people.slice(0, max - 1), hidden: people.slice(max - 1) }

const avatar = (person) => {
  const node = el('i', { class: 'avatar' }, initials(person.name))
  node.style.backgroundColor = person.color
  return node
}

/**
 * The header's people button (`button`), its panel (`panel`, with the list `list`), kept up to
 * date from `awareness`. `maxShown()` says how many avatars the header has room for.
 */
export class People {
  constructor ({ awareness, ytext, view, button, panel, list, maxShown }) {
    this.awareness = awareness
    this.ytext = ytext
    this.view = view
    this.button = button
    this.list = list
    this.maxShown = maxShown
    this.popover = popover(button, panel)
    awareness.on('change', () => this.render())
    window.addEventListener('resize', () => this.render())
    this.render()
  }

  render () {
    const people = othersIn(this.awareness)
    const { shown, hidden } = split(people, this.maxShown())
    const chips = shown.map(person => el('span', {
      class: 'person', title: `${person.name} is here`, dataset: { clientId: String(person.clientId), name: person.name }
    }, avatar(person)))
    if (hidden.length > 0) {
      chips.push(el('span', {
        id: 'people-more', class: 'person more', title: hidden.map(p => p.name).join(', ')
      }, `+${hidden.length}`))
    }
    this.button.replaceChildren(...chips)
    this.button.hidden = people.length === 0
    this.button.dataset.count = String(people.length)
    this.button.setAttribute('aria-label', people.length === 1 ? '1 other person here' : `${people.length} other people here`)
    this.list.replaceChildren(...people.map(person => this._row(person)))
  }

  _row (person) {
    const row = el('li', { class: 'person-row', dataset: { clientId: String(person.clientId) } },
      avatar(person), el('span', { class: 'person-name' }, person.name))
    if (person.cursor?.head) {
      const jump = el('button', { class: 'link', type: 'button', title: `Go to ${person.name}’s cursor` }, 'Go to')
      jump.addEventListener('click', () => this._goTo(person))
      row.append(jump)
    }
    return row
  }

  _goTo (person) {
    const head = Y.createAbsolutePositionFromRelativePosition(person.cursor.head, this.ytext.doc)
    if (head === null || head.type !== this.ytext) return
    this.popover.close()
    const pos = Math.min(head.index, this.view.state.doc.length)
    this.view.dispatch({ effects: this.view.constructor.scrollIntoView(pos, { y: 'center' }) })
  }
}
