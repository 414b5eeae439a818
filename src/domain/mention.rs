//! `@username` in message content (docs/protocol.md#conversations): which names a message may mention. Whether
//! a name is a member of the room is decided where the message is committed.

/// Most distinct names one message resolves (more are ignored: a message cannot ping the
/// whole user base).
pub(crate) const MAX_MENTIONS: usize = 32;

/// The lower-cased names `content` mentions, distinct, in order of appearance: `@` at the
/// start or after a character that cannot be part of a username (so `me@example.com` names
/// nobody), followed by a username (3–32 of `[A-Za-z0-9_.-]`). A trailing `.` or `-` (the
/// end of a sentence) is dropped when the rest is a username. Content without `@` costs one
/// scan and no allocation.
pub(crate) fn names(content: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if !content.contains('@') {
        return out;
    }
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let chars: Vec<char> = content.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '@' && (i == 0 || !is_name(chars[i - 1])) {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && is_name(chars[end]) {
                end += 1;
            }
            let mut name: String = chars[start..end].iter().collect();
            while name.len() > 3 && name.ends_with(['.', '-']) {
                name.pop();
            }
            if (3..=32).contains(&name.len()) {
                let lower = name.to_ascii_lowercase();
                if !out.contains(&lower) && out.len() < MAX_MENTIONS {
                    out.push(lower);
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn finds_usernames_after_at() {
        assert_eq!(names("hi @Alice and @bob."), ["alice", "bob"]);
        assert_eq!(names("@carol_1, @CAROL_1 again"), ["carol_1"]);
        assert!(names("mail me@example.com").is_empty());
        assert!(names("@ab is too short, @ alone").is_empty());
        assert!(names("no mention").is_empty());
        assert_eq!(names("(@d.e-f)"), ["d.e-f"]);
    }
}
