//! Showing an error with its causes, so that a message keeps what the underlying error said while
//! each error type keeps its cause as `source()` rather than pasting it into its own text.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources: `outer: inner: innermost`. A source whose
/// text the error before it already shows is left out: some errors paste their cause into their
/// own text as well as returning it (redis-rs' server errors), which would show it twice.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("refused: {0}")]
    struct Pasting(#[source] Outer);

    #[test]
    fn shows_every_cause() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(Chain(&e).to_string(), "outer: disk full");
    }

    #[test]
    fn a_cause_the_error_already_shows_is_not_shown_twice() {
        let e = Pasting(Outer(std::io::Error::other("disk full")));
        assert_eq!(Chain(&e).to_string(), "refused: outer: disk full");
    }
}
