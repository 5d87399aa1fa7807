//! What a benchmark prints: a small table for people, or exactly one JSON object.

use serde_json::{Map, Value};

pub struct Report {
    scenario: &'static str,
    params: Vec<(&'static str, Value)>,
    results: Vec<(&'static str, Value)>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report { scenario, params: Vec::new(), results: Vec::new(), notes: Vec::new() }
    }

    pub fn param(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        self.params.push((key, value.into()));
        self
    }

    pub fn result(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        self.results.push((key, value.into()));
        self
    }

    /// A float result rounded to 3 decimals, so the JSON stays readable.
    pub fn number(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.result(key, round3(value))
    }

    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), self.scenario.into());
        for (k, v) in self.params.iter().chain(&self.results) {
            m.insert((*k).into(), v.clone());
        }
        if !self.notes.is_empty() {
            m.insert("notes".into(), self.notes.clone().into());
        }
        Value::Object(m)
    }

    pub fn table(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={}", show(v))).collect();
        let mut out = format!("bench {}  ({})\n", self.scenario, params.join(" "));
        let width = self.results.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.results {
            out.push_str(&format!("  {k:<width$}  {:>14}\n", show(v)));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json());
        } else {
            print!("{}", self.table());
        }
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn show(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.abs() >= 100.0 {
                format!("{f:.0}")
            } else if f.abs() >= 1.0 {
                format!("{f:.2}")
            } else {
                format!("{f:.3}")
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_flat_object_and_table_lists_results() {
        let mut r = Report::new("ingest");
        r.param("events", 10).number("events_per_s", 1234.5678).note("n");
        let j = r.json();
        assert_eq!(j["scenario"], "ingest");
        assert_eq!(j["events"], 10);
        assert_eq!(j["events_per_s"], 1234.568);
        let t = r.table();
        assert!(t.contains("events=10") && t.contains("events_per_s") && t.contains("1235"), "{t}");
    }
}
