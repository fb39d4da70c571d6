//! Envelope addresses as the MTA hands them over: `<local@domain>` with ESMTP arguments apart.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

/// An envelope address (MAIL FROM or RCPT TO) as the client gave it, with its ESMTP arguments
/// and helpers for its parts.
///
/// ```
/// use milterkit::filter::Address;
/// let a = Address::new("<John.Doe@Example.ORG>");
/// assert_eq!(a.addr(), "John.Doe@Example.ORG");
/// assert_eq!(a.local_part(), "John.Doe");
/// assert_eq!(a.domain(), Some("Example.ORG"));
/// assert!(a.domain_is("example.org"));
/// assert!(Address::new("<a@bücher.example>").domain_is("xn--bcher-kva.example"));
/// assert!(Address::new("<>").is_null());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The bytes as the MTA sent them (what DELRCPT must name).
    pub(super) raw: Bytes,
    /// The same as text, where it is not UTF-8 (invalid bytes replaced); `None` when `raw` is
    /// valid UTF-8 and serves as the text itself.
    lossy: Option<String>,
    pub(super) args: Vec<String>,
}

impl Address {
    /// Takes the address as the MTA sends it (angle brackets and all), without ESMTP arguments.
    pub fn new(raw: impl Into<String>) -> Address {
        Address::with_args(raw, std::iter::empty::<String>())
    }

    /// Takes the address with ESMTP arguments such as `NOTIFY=NEVER`.
    pub fn with_args<A: Into<String>>(
        raw: impl Into<String>,
        args: impl IntoIterator<Item = A>,
    ) -> Address {
        Address {
            raw: Bytes::from(raw.into()),
            lossy: None,
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// From the wire: the address and its arguments as bytes.
    pub(super) fn from_wire<'a>(raw: &[u8], args: impl Iterator<Item = &'a [u8]>) -> Address {
        Address {
            raw: Bytes::copy_from_slice(raw),
            lossy: std::str::from_utf8(raw)
                .is_err()
                .then(|| String::from_utf8_lossy(raw).into_owned()),
            args: args
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        }
    }

    /// As the MTA sent it, brackets included (invalid UTF-8 replaced).
    pub fn raw(&self) -> &str {
        match &self.lossy {
            Some(text) => text,
            None => std::str::from_utf8(&self.raw).unwrap_or_default(),
        }
    }

    /// The ESMTP arguments (`SIZE=1000`, `NOTIFY=NEVER`, …).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The address without angle brackets, source route or surrounding white space:
    /// `<@relay:a@b>` gives `a@b`.
    pub fn addr(&self) -> &str {
        let a = self.raw().trim();
        let a = a.strip_prefix('<').unwrap_or(a);
        let a = a.strip_suffix('>').unwrap_or(a);
        match a.strip_prefix('@') {
            // A source route: `@relay1,@relay2:local@domain`.
            Some(route) => route.split_once(':').map_or(a, |(_, rest)| rest),
            None => a,
        }
    }

    /// True for the null sender `<>` (bounces).
    pub fn is_null(&self) -> bool {
        self.addr().is_empty()
    }

    /// The part before the last `@` (quotes kept), or the whole address when there is no `@`.
    pub fn local_part(&self) -> &str {
        let a = self.addr();
        a.rsplit_once('@').map_or(a, |(local, _)| local)
    }

    /// The part after the last `@`, if any.
    pub fn domain(&self) -> Option<&str> {
        self.addr().rsplit_once('@').map(|(_, domain)| domain)
    }

    /// The domain in ASCII (IDNA: `bücher.example` becomes `xn--bcher-kva.example`), lower case;
    /// as given when it is not a valid domain name.
    pub fn ascii_domain(&self) -> Option<Cow<'_, str>> {
        self.domain().map(ascii_domain)
    }

    /// True if the domain is `domain`, compared without regard to case and IDNA form.
    pub fn domain_is(&self, domain: &str) -> bool {
        self.ascii_domain()
            .is_some_and(|d| d.eq_ignore_ascii_case(&ascii_domain(domain)))
    }

    /// True if the domain is `domain` or one of its subdomains (`mail.example.org` is in
    /// `example.org`), compared as [`Address::domain_is`] does.
    pub fn domain_in(&self, domain: &str) -> bool {
        let Some(d) = self.ascii_domain() else {
            return false;
        };
        let want = ascii_domain(domain);
        let (d, want) = (d.to_ascii_lowercase(), want.to_ascii_lowercase());
        d == want
            || d.strip_suffix(&want)
                .is_some_and(|head| head.ends_with('.'))
    }
}

fn ascii_domain(domain: &str) -> Cow<'_, str> {
    let domain = domain.trim_end_matches('.');
    if domain.is_ascii() {
        return Cow::Owned(domain.to_ascii_lowercase());
    }
    match idna::domain_to_ascii(domain) {
        Ok(ascii) => Cow::Owned(ascii),
        Err(_) => Cow::Borrowed(domain),
    }
}

impl From<&str> for Address {
    /// An address without ESMTP arguments.
    fn from(raw: &str) -> Address {
        Address::new(raw)
    }
}

impl From<String> for Address {
    /// An address without ESMTP arguments.
    fn from(raw: String) -> Address {
        Address::new(raw)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.raw(), f)?;
        if !self.args.is_empty() {
            write!(f, " {:?}", self.args)?;
        }
        Ok(())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_addresses() {
        let cases = [
            ("<a@b.example>", "a@b.example", "a", Some("b.example")),
            ("a@b.example", "a@b.example", "a", Some("b.example")),
            (
                " <@r1,@r2:x@y.example> ",
                "x@y.example",
                "x",
                Some("y.example"),
            ),
            (
                "<\"a@b\"@c.example>",
                "\"a@b\"@c.example",
                "\"a@b\"",
                Some("c.example"),
            ),
            ("<postmaster>", "postmaster", "postmaster", None),
            ("<>", "", "", None),
        ];
        for (raw, addr, local, domain) in cases {
            let a = Address::new(raw);
            assert_eq!(a.addr(), addr, "{raw}");
            assert_eq!(a.local_part(), local, "{raw}");
            assert_eq!(a.domain(), domain, "{raw}");
        }
    }

    #[test]
    fn domains_compare_without_case_or_idna_form() {
        let a = Address::new("<x@Mail.Bücher.Example>");
        assert!(a.domain_is("mail.xn--bcher-kva.example"));
        assert!(a.domain_is("MAIL.BÜCHER.EXAMPLE."));
        assert!(a.domain_in("bücher.example"));
        assert!(!a.domain_in("cher.example"));
        assert!(!a.domain_is("bücher.example"));
        assert!(!Address::new("<>").domain_in("example"));
    }
}
