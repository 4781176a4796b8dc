"""What the search spaces' result tables share (not sweeps: the underscore keeps this
package out of `sweep_names`): cell formats, the thesis' tables that several sweeps print
beside theirs, and the mistake-detection table of documents 003 and 001."""
