//! Bulk key import (K2): the people of a CSV file, one key each. Two layouts: the
//! plain `name,email` and AWS Cognito's user export, whose `cognito:username` is
//! the name when it is there. The CSV crate does the quoting, CRLF and BOM; here
//! are the columns, the row numbers an operator sees in an editor, and what is
//! wrong with a row.

use crate::error::GatewayError;
use std::collections::HashSet;

/// One row that can become a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Its row as a spreadsheet numbers it: the header is row 1, blank lines do
    /// not count.
    pub row: u64,
    pub name: String,
    pub email: Option<String>,
}

/// A row that cannot become a key, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowError {
    pub row: u64,
    pub message: String,
}

/// What the import gives every new key, from the query string.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    pub group: String,
    pub models: Vec<String>,
    pub monthly_budget: Option<f64>,
    pub dry_run: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            group: "default".into(),
            models: Vec::new(),
            monthly_budget: None,
            dry_run: false,
        }
    }
}

impl ImportOptions {
    /// `group=&models=a,b&monthly_budget=&dry_run=true|false`.
    pub fn parse(query: &str) -> Result<ImportOptions, GatewayError> {
        let mut o = ImportOptions::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim();
            match k.as_ref() {
                "group" if !v.is_empty() => o.group = v.to_string(),
                "group" => {}
                "models" => {
                    o.models = v
                        .split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "monthly_budget" if v.is_empty() => {}
                "monthly_budget" => {
                    o.monthly_budget = Some(
                        v.parse()
                            .ok()
                            .filter(|b: &f64| b.is_finite() && *b >= 0.0)
                            .ok_or_else(|| {
                                GatewayError::BadRequest(format!(
                                    "monthly_budget: `{v}` is not an amount"
                                ))
                            })?,
                    )
                }
                "dry_run" => {
                    o.dry_run = match v {
                        "" | "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => {
                            return Err(GatewayError::BadRequest(format!(
                                "dry_run: `{v}` is not true or false"
                            )))
                        }
                    }
                }
                other => {
                    return Err(GatewayError::BadRequest(format!(
                        "unknown parameter `{other}`: use group, models, monthly_budget, dry_run"
                    )))
                }
            }
        }
        Ok(o)
    }
}

/// A plausible address: one `@`, something on each side, a dot in the domain,
/// no spaces. Whether it receives mail only sending can tell.
pub fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !e.chars().any(char::is_whitespace)
}

/// The people of a CSV file, and the rows that are wrong. An unreadable file, or
/// one without a name or email column, is an error for the whole import.
pub fn parse(csv_bytes: &[u8]) -> Result<(Vec<Person>, Vec<RowError>), GatewayError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(csv_bytes);
    let bad = |e: csv::Error| GatewayError::BadRequest(format!("the CSV cannot be read: {e}"));
    let headers: Vec<String> = reader
        .headers()
        .map_err(bad)?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (cognito, name_col, email_col) =
        (column("cognito:username"), column("name"), column("email"));
    if cognito.is_none() && name_col.is_none() && email_col.is_none() {
        return Err(GatewayError::BadRequest(format!(
            "the CSV's header names no `name`, `cognito:username` or `email` column (it has: {})",
            headers.join(", ")
        )));
    }
    let mut people = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, record) in reader.records().enumerate() {
        let row = i as u64 + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(RowError {
                    row,
                    message: format!("unreadable: {e}"),
                });
                continue;
            }
        };
        let cell = |c: Option<usize>| {
            c.and_then(|i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let email = cell(email_col);
        let name = cell(cognito)
            .or_else(|| cell(name_col))
            .or_else(|| email.clone());
        let checked = match (name, email) {
            (None, _) => Err("no name and no email".to_string()),
            (Some(_), Some(e)) if !plausible_email(&e) => {
                Err(format!("email `{e}` is not an address"))
            }
            (Some(_), Some(e)) if !seen.insert(e.to_ascii_lowercase()) => {
                Err(format!("email `{e}` appears twice in the file"))
            }
            (Some(name), email) => Ok(Person { row, name, email }),
        };
        match checked {
            Ok(p) => people.push(p),
            Err(message) => errors.push(RowError { row, message }),
        }
    }
    Ok((people, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_layout() {
        let (people, errors) = parse(b"name,email\nAnn,ann@example.com\nBob,\n\n,\n").unwrap();
        assert_eq!(
            people,
            vec![
                Person {
                    row: 2,
                    name: "Ann".into(),
                    email: Some("ann@example.com".into())
                },
                Person {
                    row: 3,
                    name: "Bob".into(),
                    email: None
                },
            ]
        );
        assert_eq!(
            errors,
            vec![RowError {
                row: 4,
                message: "no name and no email".into()
            }]
        );
    }

    #[test]
    fn a_cognito_export_with_bom_crlf_quotes_and_empty_cells() {
        let csv = "\u{feff}name,given_name,email,email_verified,cognito:username\r\n\
                   \"Li, Wei\",Wei,wei@example.cn,true,wli\r\n\
                   ,,zhang@example.cn,true,\r\n\
                   \"Quote \"\"Q\"\"\",,q@example.com,false,qq\r\n";
        let (people, errors) = parse(csv.as_bytes()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = people.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["wli", "zhang@example.cn", "qq"]);
        assert_eq!(people[0].email.as_deref(), Some("wei@example.cn"));
        assert_eq!(people.iter().map(|p| p.row).collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn wrong_rows_are_named_and_wrong_files_refused() {
        let (people, errors) =
            parse(b"name,email\na,not-an-address\nb,b@x.io\nc,B@X.IO\nd,d@x.io,extra\n").unwrap();
        assert_eq!(people.len(), 2);
        assert_eq!(errors[0].row, 2);
        assert!(errors[0].message.contains("not-an-address"));
        assert_eq!(errors[1].row, 4);
        assert!(errors[1].message.contains("twice"));
        let e = parse(b"user,mail\nx,y\n").unwrap_err();
        assert!(e.to_string().contains("user, mail"), "{e}");
        assert_eq!(
            parse(b"name\n\"unterminated\n")
                .map(|(p, _)| p.len())
                .unwrap_or(9),
            1
        );
    }

    #[test]
    fn options_from_the_query() {
        let o =
            ImportOptions::parse("group=team&models=a,+b&monthly_budget=5&dry_run=true").unwrap();
        assert_eq!(o.group, "team");
        assert_eq!(o.models, ["a", "b"]);
        assert_eq!(o.monthly_budget, Some(5.0));
        assert!(o.dry_run);
        assert_eq!(ImportOptions::parse("").unwrap(), ImportOptions::default());
        assert!(ImportOptions::parse("monthly_budget=-1").is_err());
        assert!(ImportOptions::parse("colour=red").is_err());
    }
}
