//! What the named detectors find. A regex proposes a span; a check over the span
//! and its neighbours confirms it (a check digit, a Luhn sum, octet ranges, digit
//! boundaries the regex cannot express without look-around).

use regex::Regex;

/// The built-in detectors, in the order they win an overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Secret,
    Email,
    CnId,
    BankCard,
    Phone,
    Ipv4,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::Secret,
        Builtin::Email,
        Builtin::CnId,
        Builtin::BankCard,
        Builtin::Phone,
        Builtin::Ipv4,
    ];

    /// The name in `masking.detectors`.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Secret => "secret",
            Builtin::Email => "email",
            Builtin::CnId => "cn_id",
            Builtin::BankCard => "bank_card",
            Builtin::Phone => "phone",
            Builtin::Ipv4 => "ipv4",
        }
    }

    pub fn parse(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn regex(self) -> Regex {
        let pattern = match self {
            // OpenAI/Anthropic-style `sk-…`, AWS access key ids, GitHub and Slack
            // tokens, Google API keys, JWTs.
            Builtin::Secret => concat!(
                r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
                r"|AKIA[0-9A-Z]{16}",
                r"|gh[pousr]_[A-Za-z0-9]{36,}",
                r"|xox[abprs]-[A-Za-z0-9-]{10,}",
                r"|AIza[0-9A-Za-z_-]{35}",
                r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            ),
            Builtin::Email => r"(?i)[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}",
            // 6-digit region, birth date (1800–2099), 3-digit sequence, check char.
            Builtin::CnId => {
                r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
            }
            // 13 to 19 digits, single spaces or dashes between them allowed.
            Builtin::BankCard => r"[1-9](?:[ -]?\d){12,18}",
            // Mainland mobile (optionally +86), then international with a `+` or
            // `00`, then North American `(555) 123-4567` / `555-123-4567`.
            Builtin::Phone => concat!(
                r"(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}",
                r"|(?:\+|00)[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,4}",
                r"|\(\d{3}\) ?\d{3}[.-]\d{4}",
                r"|\d{3}[.-]\d{3}[.-]\d{4}",
            ),
            Builtin::Ipv4 => r"(?:\d{1,3}\.){3}\d{1,3}",
        };
        // The patterns are constants, checked by the tests below.
        Regex::new(pattern).unwrap_or_else(|_| Regex::new("$^").expect("an empty pattern"))
    }

    /// The span `text[start..end]` the regex proposed, confirmed or refused; a
    /// card may come back shorter (a number glued to it cut off).
    pub fn confirm(self, text: &str, start: usize, end: usize) -> Option<usize> {
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        let span = &text[start..end];
        match self {
            Builtin::Secret => {
                let glued = before.is_some_and(|c| c.is_ascii_alphanumeric());
                let sk_body = span.strip_prefix("sk-");
                // `sk-` words in prose (`sk-this-is-a-phrase`) are not keys.
                let keyish = sk_body.is_none_or(|b| {
                    b.bytes().any(|c| c.is_ascii_digit())
                        && b.bytes().any(|c| c.is_ascii_alphabetic())
                });
                (!glued && keyish).then_some(end)
            }
            Builtin::Email => Some(end),
            Builtin::CnId => (!digit(before)
                && !digit(after)
                && !matches!(after, Some('X' | 'x'))
                && cn_id_check(span))
            .then_some(end),
            Builtin::BankCard => {
                if digit(before) {
                    return None;
                }
                card_prefix(text, start, end)
            }
            Builtin::Phone => {
                let digits = span.bytes().filter(u8::is_ascii_digit).count();
                let glued = digit(before) || before == Some('+') || digit(after);
                (!glued && (7..=15).contains(&digits)).then_some(end)
            }
            Builtin::Ipv4 => {
                let dotted_on = text[end..].starts_with('.')
                    && text[end + 1..].starts_with(|c: char| c.is_ascii_digit());
                let octets_ok = span
                    .split('.')
                    .all(|o| o.parse::<u16>().is_ok_and(|v| v <= 255));
                (!digit(before) && before != Some('.') && !digit(after) && !dotted_on && octets_ok)
                    .then_some(end)
            }
        }
    }
}

/// GB 11643: weights 2^(17-i) mod 11, the check char from the sum mod 11.
pub fn cn_id_check(id: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let b = id.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = b[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    b[17].to_ascii_uppercase() == CHECK[(sum % 11) as usize]
}

/// The Luhn sum of the digits of `s` (separators skipped) is a multiple of 10.
pub fn luhn(s: &str) -> bool {
    let mut sum = 0;
    for (i, d) in s.bytes().rev().filter(u8::is_ascii_digit).enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// The longest prefix of the proposed card span, ending at its end or at a
/// separator, that has 13–19 digits, passes Luhn and is not glued to a digit.
fn card_prefix(text: &str, start: usize, end: usize) -> Option<usize> {
    let span = &text[start..end];
    let mut ends: Vec<usize> = span
        .char_indices()
        .filter(|(_, c)| *c == ' ' || *c == '-')
        .map(|(i, _)| start + i)
        .collect();
    ends.push(end);
    ends.into_iter().rev().find(|&e| {
        let part = &text[start..e];
        let digits = part.bytes().filter(u8::is_ascii_digit).count();
        let glued = text[e..].starts_with(|c: char| c.is_ascii_digit());
        (13..=19).contains(&digits) && !glued && luhn(part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(b: Builtin, text: &str) -> Vec<String> {
        b.regex()
            .find_iter(text)
            .filter_map(|m| {
                b.confirm(text, m.start(), m.end())
                    .map(|e| text[m.start()..e].to_string())
            })
            .collect()
    }

    #[test]
    fn every_pattern_compiles() {
        for b in Builtin::ALL {
            assert!(Regex::new(b.regex().as_str()).is_ok(), "{}", b.name());
            assert_ne!(b.regex().as_str(), "$^", "{}", b.name());
        }
    }

    #[test]
    fn resident_ids_need_their_check_digit() {
        // 11010519491231002X is the standard's own example.
        assert!(cn_id_check("11010519491231002X"));
        assert!(cn_id_check("11010519491231002x"));
        assert!(!cn_id_check("110105194912310021"));
        assert_eq!(
            found(Builtin::CnId, "身份证号11010519491231002X，谢谢"),
            ["11010519491231002X"]
        );
        assert!(found(Builtin::CnId, "order 110105194912310021").is_empty());
        assert!(found(Builtin::CnId, "911010519491231002X").is_empty());
    }

    #[test]
    fn cards_need_luhn_and_may_be_grouped() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert_eq!(
            found(Builtin::BankCard, "pay 4111-1111-1111-1111 now"),
            ["4111-1111-1111-1111"]
        );
        assert_eq!(
            found(Builtin::BankCard, "卡号6222021234567890128"),
            ["6222021234567890128"]
        );
        // A quantity glued on after a space is cut off, not the card lost.
        assert_eq!(
            found(Builtin::BankCard, "4111 1111 1111 1111 2 items"),
            ["4111 1111 1111 1111"]
        );
        assert!(found(Builtin::BankCard, "4111111111111112").is_empty());
        assert!(found(Builtin::BankCard, "94111111111111111").is_empty());
    }

    #[test]
    fn phones_mainland_and_international() {
        assert_eq!(found(Builtin::Phone, "手机13812345678。"), ["13812345678"]);
        assert_eq!(
            found(Builtin::Phone, "call +86 138 1234 5678"),
            ["+86 138 1234 5678"]
        );
        assert_eq!(
            found(Builtin::Phone, "+44 20 7946 0958 office"),
            ["+44 20 7946 0958"]
        );
        assert_eq!(found(Builtin::Phone, "(555) 123-4567"), ["(555) 123-4567"]);
        assert!(found(Builtin::Phone, "id 123813812345678").is_empty());
        assert!(found(Builtin::Phone, "12812345678").is_empty());
    }

    #[test]
    fn addresses_secrets_and_mail() {
        assert_eq!(
            found(
                Builtin::Ipv4,
                "from 10.0.12.255, not 1.2.3.4.5 or 300.1.1.1"
            ),
            ["10.0.12.255"]
        );
        assert_eq!(
            found(
                Builtin::Secret,
                "key sk-proj-abc123DEF456ghi789JKL0 and ask-questions-about-it-today-ok"
            ),
            ["sk-proj-abc123DEF456ghi789JKL0"]
        );
        assert_eq!(
            found(Builtin::Secret, "AKIAIOSFODNN7EXAMPLE"),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert!(found(Builtin::Secret, "sk-this-is-just-a-long-kebab-phrase").is_empty());
        assert_eq!(
            found(Builtin::Email, "写信给 zhang.san+ai@example.com.cn 吧"),
            ["zhang.san+ai@example.com.cn"]
        );
    }
}
