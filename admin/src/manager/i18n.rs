//! English and Simplified Chinese. Templates write the English text, `t` gives it
//! in the page's language; a test checks every text the templates use has its
//! Chinese line, so a missing one fails the build's tests rather than a page.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Lang::En),
            "zh" | "zh-cn" | "zh-hans" => Some(Lang::Zh),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The `html lang` attribute.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The switch's cookie first, else the browser's first language we speak.
    pub fn choose(cookie: Option<&str>, accept_language: Option<&str>) -> Lang {
        if let Some(l) = cookie.and_then(Lang::parse) {
            return l;
        }
        let mut langs: Vec<(f32, Lang)> = accept_language
            .unwrap_or("")
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let tag = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse().ok()))
                    .unwrap_or(1.0);
                let lang = if tag.starts_with("zh") {
                    Lang::Zh
                } else if tag.starts_with("en") {
                    Lang::En
                } else {
                    return None;
                };
                Some((q, lang))
            })
            .collect();
        langs.sort_by(|a, b| b.0.total_cmp(&a.0));
        langs.first().map_or(Lang::En, |l| l.1)
    }
}

/// The text in the language; English when a line is missing.
pub fn t(lang: Lang, en: &str) -> &str {
    match lang {
        Lang::En => en,
        Lang::Zh => ZH
            .binary_search_by(|(k, _)| k.cmp(&en))
            .map_or(en, |i| ZH[i].1),
    }
}

/// English → Chinese, sorted by the English text (a test keeps it sorted).
static ZH: &[(&str, &str)] = &include!("zh.rs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_chooses_unless_switched() {
        assert_eq!(
            Lang::choose(None, Some("zh-CN,zh;q=0.9,en;q=0.8")),
            Lang::Zh
        );
        assert_eq!(
            Lang::choose(None, Some("en-US,en;q=0.9,zh;q=0.8")),
            Lang::En
        );
        assert_eq!(Lang::choose(None, Some("fr;q=1,zh-TW;q=0.5")), Lang::Zh);
        assert_eq!(Lang::choose(None, None), Lang::En);
        assert_eq!(Lang::choose(Some("en"), Some("zh-CN")), Lang::En);
        assert_eq!(Lang::choose(Some("zz"), Some("zh-CN")), Lang::Zh);
    }

    #[test]
    fn the_catalogue_is_sorted_and_unique() {
        for w in ZH.windows(2) {
            assert!(
                w[0].0 < w[1].0,
                "not sorted or repeated: {:?} / {:?}",
                w[0].0,
                w[1].0
            );
        }
        assert_eq!(t(Lang::Zh, "Sign in"), "登录");
        assert_eq!(t(Lang::En, "Sign in"), "Sign in");
        assert_eq!(t(Lang::Zh, "no such line"), "no such line");
    }
}
