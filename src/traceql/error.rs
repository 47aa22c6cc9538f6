//! The one error the TraceQL front end returns.

/// A query that does not parse or fails a static check.
///
/// `message` already names the place (`unexpected ')' at 1:14, expected a value`) so callers
/// can hand it to the user as is; `pos` is the byte offset for tools that underline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// Byte offset into the query.
    pub pos: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    pub message: String,
}

impl ParseError {
    /// Builds `"{head} at {line}:{col}"`, followed by `", {tail}"` when there is a tail.
    pub(crate) fn new(query: &str, pos: usize, head: &str, tail: Option<&str>) -> ParseError {
        let pos = pos.min(query.len());
        let (line, col) = line_col(query, pos);
        let message = match tail {
            Some(tail) => format!("{head} at {line}:{col}, {tail}"),
            None => format!("{head} at {line}:{col}"),
        };
        ParseError {
            pos,
            line,
            col,
            message,
        }
    }
}

fn line_col(query: &str, pos: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in query.char_indices() {
        if i >= pos {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}
