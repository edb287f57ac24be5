//! PostgreSQL errors as text people can act on: the server's message with
//! its SQLSTATE, detail, hint and context, bounded and escaped (it can quote
//! the data). Used by `db` and by `embedded` alike, so it sits below both.

/// Server text as it may appear in messages: control characters escaped
/// and at most a few hundred characters (it can quote the data).
pub fn clip(s: &str) -> String {
    const MAX: usize = 300;
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The server's message for a database error ("db error" alone says
/// nothing): severity, message, `[SQLSTATE xxxxx]`, and detail, hint and
/// context when the server sent them; for other errors (connection, TLS) the
/// error with its causes.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        let mut text = format!(
            "{}: {} [SQLSTATE {}]",
            d.severity(),
            clip(d.message()),
            d.code().code()
        );
        for (label, part) in [
            ("detail", d.detail()),
            ("server hint", d.hint()),
            ("context", d.where_()),
        ] {
            if let Some(p) = part {
                text.push_str(&format!("; {label}: {}", clip(p)));
            }
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&clip(&s.to_string()));
        source = s.source();
    }
    text
}
