// Starting a document, from the home page or from a document's menu: a blank one, or one made
// from a .md / .txt file.

import { documentFromFile } from './documents.js'
import { ImportProblem } from './files.js'
import { randomDocumentName } from './names.js'
import { showToast } from './ui.js'
import { documentHref } from './urls.js'

/** Open a new, empty document (its name is made here, so this works offline too). */
export const newDocument = () => location.assign(documentHref(randomDocumentName()))

/** Make a new document from `file` and open it; a file that is not text is refused, saying why. */
export const importFile = async (file) => {
  try {
    const room = await documentFromFile(file)
    location.assign(documentHref(room))
  } catch (err) {
    if (err instanceof ImportProblem) {
      showToast(err.message)
    } else {
      console.warn('collab: could not import a file', err)
      showToast(`Could not make a document from “${file.name}”`)
    }
  }
}

/** The first file of a file input or a drop (one document per import). */
export const importFiles = (source) => {
  const files = source.files ? [...source.files] : []
  if (source.value !== undefined) source.value = ''
  if (files.length === 0) return
  if (files.length > 1) showToast('One file at a time: opening the first')
  importFile(files[0])
}
