//! Terminal output shared by the client commands: results go to stdout (a closed pipe is not an
//! error), progress bars to stderr (hidden when stderr is not a terminal).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// Writes to stdout, treating a closed pipe (`doc-rag search … | head`) as success rather than
/// panicking the way `print!` would.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// A bar of `len` steps labelled `prefix`. `ProgressBar::new` draws to stderr and stays hidden
/// when stderr is not a terminal, so output piped to a file or a test has no bar in it.
pub(crate) fn progress_bar(len: usize, prefix: &'static str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bar = ProgressBar::new(len as u64)
        .with_prefix(prefix)
        .with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Collapses whitespace so text fits on one indented line, and cuts it to `max_chars`
/// characters (not bytes, so multi-byte text is never split mid-character).
pub(crate) fn excerpt(text: &str, max_chars: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max_chars {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(max_chars).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_on_characters() {
        assert_eq!(excerpt("  a \n\t b  ", 10), "a b");
        assert_eq!(excerpt("ééééé", 3), "ééé…");
        assert_eq!(excerpt("abc def", 4), "abc…");
    }
}
