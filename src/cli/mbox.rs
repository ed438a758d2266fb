//! Reading an mbox file (mboxrd) handed to `append --mbox`: the messages it holds, unquoted,
//! or a typed reason the whole file is refused, so a bad file appends nothing.

/// Why an mbox file was refused. Nothing has been appended when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MboxError {
    #[error("the file is empty; an mbox holds at least one message")]
    Empty,
    #[error("not an mbox file: it does not begin with a `From ` separator line")]
    NoSeparator,
    #[error("the file is truncated: its last line has no line ending")]
    Unterminated,
    #[error(
        "the file is truncated: message {message} does not end with the blank line mboxrd puts after every message"
    )]
    NoTrailingBlank { message: usize },
    #[error("message {message} (the separator on line {line}) is empty")]
    EmptyMessage { message: usize, line: usize },
}

/// The messages of an mboxrd file, in file order. Each is the text between its `From `
/// separator line and the next (less the blank line that ends every message), with one `>`
/// taken off every line that reads `>From `, `>>From `, …; line endings stay as in the file.
pub fn messages(file: &[u8]) -> Result<Vec<Vec<u8>>, MboxError> {
    if file.is_empty() {
        return Err(MboxError::Empty);
    }
    if !file.starts_with(b"From ") {
        return Err(MboxError::NoSeparator);
    }
    if !file.ends_with(b"\n") {
        return Err(MboxError::Unterminated);
    }
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<(Vec<u8>, usize)> = None;
    let mut finish = |current: Option<(Vec<u8>, usize)>, last: bool| -> Result<(), MboxError> {
        let Some((mut body, line)) = current else {
            return Ok(());
        };
        let message = messages.len() + 1;
        // The blank line before the next separator (or the end) belongs to the file, not to
        // the message. Only the last message must have it: without it the file was cut short.
        let blank = if body.ends_with(b"\n\r\n") || body == b"\r\n" {
            2
        } else if body.ends_with(b"\n\n") || body == b"\n" {
            1
        } else {
            0
        };
        if blank == 0 && last {
            return Err(MboxError::NoTrailingBlank { message });
        }
        body.truncate(body.len() - blank);
        if body.is_empty() {
            return Err(MboxError::EmptyMessage { message, line });
        }
        messages.push(body);
        Ok(())
    };
    for (n, line) in file.split_inclusive(|&b| b == b'\n').enumerate() {
        if line.starts_with(b"From ") {
            finish(current.take(), false)?;
            current = Some((Vec::new(), n + 1));
            continue;
        }
        if let Some((body, _)) = current.as_mut() {
            let quotes = line.iter().take_while(|&&b| b == b'>').count();
            if quotes > 0 && line[quotes..].starts_with(b"From ") {
                body.extend_from_slice(&line[1..]);
            } else {
                body.extend_from_slice(line);
            }
        }
    }
    finish(current.take(), true)?;
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_split_and_quoted_from_lines_lose_one_level() {
        let file = b"From a@b Thu Nov 29 14:33:59 2007\nSubject: one\n\n>From here\n>>From there\n>not from\nFrom: x\n\nFrom c@d Fri Nov 30 00:00:00 2007\r\nSubject: two\r\n\r\nbody\r\n\r\n";
        let got = messages(file).expect("parses");
        assert_eq!(
            got,
            vec![
                b"Subject: one\n\nFrom here\n>From there\n>not from\nFrom: x\n".to_vec(),
                b"Subject: two\r\n\r\nbody\r\n".to_vec(),
            ]
        );
    }

    #[test]
    fn bad_files_are_refused() {
        assert_eq!(messages(b""), Err(MboxError::Empty));
        assert_eq!(messages(b"Subject: x\n\n"), Err(MboxError::NoSeparator));
        assert_eq!(
            messages(b"From a\nSubject: x\n\nbo"),
            Err(MboxError::Unterminated)
        );
        assert_eq!(
            messages(b"From a\nSubject: x\n\nFrom b\nSubject: y\n"),
            Err(MboxError::NoTrailingBlank { message: 2 })
        );
        assert_eq!(
            messages(b"From a\nFrom b\nSubject: y\n\n"),
            Err(MboxError::EmptyMessage {
                message: 1,
                line: 1
            })
        );
    }
}
