//! Typed input. Each `parse` takes an input's raw fields as a transport read them (`None`:
//! absent) and gives the typed value, or the [`FieldErrors`] naming every field at fault, each
//! with the messages of the [`validate`] rules it breaks, in their order. The account bodies
//! are parsed here before their use-case runs; a room's or a message's fields are checked with
//! the same rules by their use-case, after the access rule (`validate::room_name`,
//! `room_settings`, `draft`, `reaction`), and the socket frames' fields in `ws::protocol`.

use super::validate::{self, FieldErrors, Rule};

const USERNAME: &[Rule] = &[validate::username_length, validate::username_chars];
const EMAIL: &[Rule] = &[
    validate::email_length,
    validate::email_address,
    validate::plain_text,
];
const PASSWORD: &[Rule] = &[validate::password_length];
const NAME: &[Rule] = &[validate::name_length, validate::plain_text];

/// The fields at fault so far, each with its messages.
#[derive(Default)]
struct Faults(FieldErrors);

impl Faults {
    fn add(&mut self, field: &str, message: String) {
        self.0.entry(field.to_owned()).or_default().push(message);
    }

    /// `value`, or "is required" on `field` when it is absent.
    fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.add(field, "is required".into());
        }
        value
    }

    /// Every rule a present `value` breaks, on `field`.
    fn every(&mut self, field: &str, value: Option<&str>, rules: &[Rule]) {
        let Some(value) = value else { return };
        for rule in rules {
            if let Err(m) = rule(value) {
                self.add(field, m);
            }
        }
    }

    /// The first rule a present `value` breaks, on `field`.
    fn first(&mut self, field: &str, value: Option<&str>, rules: &[Rule]) {
        if let Some(Err(m)) = value.map(|v| rules.iter().try_for_each(|rule| rule(v))) {
            self.add(field, m);
        }
    }

    /// `value` if no field is at fault. (`value` is `None` only when a required field is
    /// missing, which is a fault.)
    fn finish<T>(self, value: Option<T>) -> Result<T, FieldErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.0),
        }
    }
}

/// `value`, or "is required" on `field`.
///
/// # Errors
/// `field` when `value` is absent.
pub(crate) fn required<T>(field: &str, value: Option<T>) -> Result<T, FieldErrors> {
    let mut faults = Faults::default();
    let value = faults.required(field, value);
    faults.finish(value)
}

/// A new account: a username (3–32 of `[A-Za-z0-9_.-]`), an email address (at most 254
/// characters, plain text), a password (8–128 characters; `password_confirm`, when given,
/// equal to it) and optional names (at most 100 characters, plain text).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NewAccount {
    pub(crate) username: String,
    pub(crate) email: String,
    pub(crate) password: String,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
}

impl NewAccount {
    /// # Errors
    /// Every field at fault.
    pub(crate) fn parse(
        username: Option<String>,
        email: Option<String>,
        password: Option<String>,
        password_confirm: Option<String>,
        first_name: Option<String>,
        last_name: Option<String>,
    ) -> Result<Self, FieldErrors> {
        let mut faults = Faults::default();
        faults.every("username", username.as_deref(), USERNAME);
        faults.every("email", email.as_deref(), EMAIL);
        faults.every("password", password.as_deref(), PASSWORD);
        if let (Some(p), Some(c)) = (&password, &password_confirm)
            && p != c
        {
            faults.add("password_confirm", "does not match password".into());
        }
        faults.every("first_name", first_name.as_deref(), NAME);
        faults.every("last_name", last_name.as_deref(), NAME);
        let username = faults.required("username", username);
        let email = faults.required("email", email);
        let password = faults.required("password", password);
        let account = username.zip(email).zip(password).map(|((u, e), p)| Self {
            username: u,
            email: e,
            password: p,
            first_name,
            last_name,
        });
        faults.finish(account)
    }
}

/// A login attempt: a username or an email address (plain text) and a password, both
/// non-empty.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) login: String,
    pub(crate) password: String,
}

impl Credentials {
    /// # Errors
    /// Every field at fault: `login`, `password`.
    pub(crate) fn parse(
        login: Option<String>,
        password: Option<String>,
    ) -> Result<Self, FieldErrors> {
        let mut faults = Faults::default();
        let login = faults.required("login", login.filter(|l| !l.is_empty()));
        // The database would refuse NUL; control characters name nobody anyway.
        faults.every("login", login.as_deref(), &[validate::plain_text]);
        let password = faults.required("password", password.filter(|p| !p.is_empty()));
        let credentials = login
            .zip(password)
            .map(|(login, password)| Self { login, password });
        faults.finish(credentials)
    }
}

/// Changes to a profile: `None` leaves a field as it is; for the names, `Some(None)` clears
/// it. The email as a new account's; a name at most 100 characters of plain text (only its
/// first fault is reported).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProfileChanges {
    pub(crate) email: Option<String>,
    pub(crate) first_name: Option<Option<String>>,
    pub(crate) last_name: Option<Option<String>>,
    pub(crate) accept_dms: Option<bool>,
    pub(crate) send_receipts: Option<bool>,
}

impl ProfileChanges {
    /// # Errors
    /// Every field at fault.
    pub(crate) fn parse(
        email: Option<String>,
        first_name: Option<Option<String>>,
        last_name: Option<Option<String>>,
        accept_dms: Option<bool>,
        send_receipts: Option<bool>,
    ) -> Result<Self, FieldErrors> {
        let mut faults = Faults::default();
        faults.every("email", email.as_deref(), EMAIL);
        faults.first("first_name", first_name.clone().flatten().as_deref(), NAME);
        faults.first("last_name", last_name.clone().flatten().as_deref(), NAME);
        faults.finish(Some(Self {
            email,
            first_name,
            last_name,
            accept_dms,
            send_receipts,
        }))
    }
}

/// A password change: the current password (checked by the use-case) and a new one of 8–128
/// characters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PasswordChange {
    pub(crate) current: String,
    pub(crate) new: String,
}

impl PasswordChange {
    /// # Errors
    /// Every field at fault: `current_password`, `new_password`.
    pub(crate) fn parse(
        current_password: Option<String>,
        new_password: Option<String>,
    ) -> Result<Self, FieldErrors> {
        let mut faults = Faults::default();
        let current = faults.required("current_password", current_password);
        faults.every("new_password", new_password.as_deref(), PASSWORD);
        let new = faults.required("new_password", new_password);
        let change = current.zip(new).map(|(current, new)| Self { current, new });
        faults.finish(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    fn fields(errors: &FieldErrors) -> Vec<(&str, Vec<&str>)> {
        errors
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn a_new_account_reports_every_field_and_every_rule() {
        let ok = NewAccount::parse(
            some("ada.l-1"),
            some("ada@example.com"),
            some("s3cret-password"),
            some("s3cret-password"),
            some("Ada"),
            None,
        );
        assert_eq!(ok.map(|a| a.username), Ok("ada.l-1".to_owned()));

        let err = NewAccount::parse(
            some("a!"),
            Some(format!("{}\u{1}", "x".repeat(260))),
            some("short"),
            some("other"),
            Some(format!("{}\u{0}", "n".repeat(100))),
            some("fine"),
        )
        .unwrap_err();
        assert_eq!(
            fields(&err),
            [
                (
                    "email",
                    vec![
                        "is too long",
                        "is not a valid email address",
                        "must not contain control characters (other than newline and tab)"
                    ]
                ),
                (
                    "first_name",
                    vec![
                        "must be at most 100 characters",
                        "must not contain control characters (other than newline and tab)"
                    ]
                ),
                ("password", vec!["must be 8 to 128 characters"]),
                ("password_confirm", vec!["does not match password"]),
                (
                    "username",
                    vec![
                        "must be 3 to 32 characters",
                        "may contain only letters, digits, `_`, `.` and `-`"
                    ]
                ),
            ]
        );

        let missing = NewAccount::parse(None, None, None, some("x"), None, None).unwrap_err();
        assert_eq!(
            fields(&missing),
            [
                ("email", vec!["is required"]),
                ("password", vec!["is required"]),
                ("username", vec!["is required"]),
            ]
        );
    }

    #[test]
    fn credentials_need_a_plain_login_and_a_password() {
        assert_eq!(
            Credentials::parse(some("ada"), some("pw")),
            Ok(Credentials {
                login: "ada".into(),
                password: "pw".into()
            })
        );
        let err = Credentials::parse(some(""), some("")).unwrap_err();
        assert_eq!(
            fields(&err),
            [
                ("login", vec!["is required"]),
                ("password", vec!["is required"])
            ]
        );
        let err = Credentials::parse(some("a\u{0}"), some("pw")).unwrap_err();
        assert_eq!(err.keys().collect::<Vec<_>>(), ["login"]);
    }

    #[test]
    fn profile_changes_report_a_names_first_fault_only() {
        let clear = ProfileChanges::parse(None, Some(None), None, Some(false), None);
        assert_eq!(clear.map(|c| c.first_name), Ok(Some(None)));
        let err = ProfileChanges::parse(
            some("nope"),
            Some(Some(format!("{}\u{0}", "n".repeat(100)))),
            Some(Some("x\u{7}".into())),
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(
            fields(&err),
            [
                ("email", vec!["is not a valid email address"]),
                ("first_name", vec!["must be at most 100 characters"]),
                (
                    "last_name",
                    vec!["must not contain control characters (other than newline and tab)"]
                ),
            ]
        );
    }

    #[test]
    fn a_password_change_needs_both_and_a_valid_new_one() {
        let err = PasswordChange::parse(None, some("short")).unwrap_err();
        assert_eq!(
            fields(&err),
            [
                ("current_password", vec!["is required"]),
                ("new_password", vec!["must be 8 to 128 characters"]),
            ]
        );
        assert!(PasswordChange::parse(some(""), some("long enough")).is_ok());
        assert_eq!(
            required::<i64>("seq", None).map_err(|e| fields(&e).len()),
            Err(1)
        );
    }

    #[test]
    fn email_addresses() {
        for ok in [
            "a@b",
            "first.last+tag@example.co.uk",
            "x@[127.0.0.1]",
            "x@[::1]",
            "user@bücher.de",
            "a!#$%&'*+/=?^_`{|}~-@example.com",
        ] {
            assert!(validate::email_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@b@c",
            "a@-example.com",
            "a@[300.1.1.1]",
            &format!("{}@example.com", "x".repeat(65)),
        ] {
            assert!(validate::email_address(bad).is_err(), "{bad}");
        }
    }
}
