//! Synthetic, realistic BNPL traffic for demos and load tests: transactions
//! with plausible amounts and customer mixes, and for each one the prediction
//! the ML API would log, with model scores that follow the customer's risk.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde_json::json;

/// Business decisions the ML API can return.
pub const DECISIONS: [&str; 3] = ["approve", "review", "decline"];
/// Risk levels the ML API can return.
pub const RISK_LEVELS: [&str; 3] = ["LOW", "MEDIUM", "HIGH"];
/// Models whose scores each prediction carries.
pub const MODELS: [&str; 4] = ["ridge", "logistic", "elastic", "ensemble"];

const CREDIT: [(&str, f64, f64); 4] = [
    // (range, share of customers, base default risk)
    ("excellent", 0.20, 0.06),
    ("good", 0.40, 0.14),
    ("fair", 0.28, 0.30),
    ("poor", 0.12, 0.52),
];
const AGES: [(&str, f64); 6] = [
    ("18-24", 0.16),
    ("25-34", 0.31),
    ("35-44", 0.24),
    ("45-54", 0.15),
    ("55-64", 0.09),
    ("65+", 0.05),
];
const DEVICES: [(&str, f64); 3] = [("mobile", 0.62), ("desktop", 0.30), ("tablet", 0.08)];
const CATEGORIES: [(&str, f64); 7] = [
    ("electronics", 0.24),
    ("fashion", 0.26),
    ("home", 0.16),
    ("beauty", 0.10),
    ("travel", 0.08),
    ("sports", 0.09),
    ("groceries", 0.07),
];
const SELECTED: [(&str, f64); 4] = [
    ("ridge", 0.40),
    ("logistic", 0.30),
    ("elastic", 0.20),
    ("ensemble", 0.10),
];

/// Score thresholds of the decision policy.
pub const APPROVE_BELOW: f64 = 0.30;
pub const REVIEW_BELOW: f64 = 0.50;

pub struct Generator {
    rng: StdRng,
    now: DateTime<Utc>,
    days: u32,
    customers: u32,
    amount: LogNormal<f64>,
    latency: LogNormal<f64>,
    model_noise: Normal<f64>,
}

/// One purchase and the prediction logged for it.
#[derive(Debug, Clone)]
pub struct GeneratedPair {
    pub transaction: String,
    pub prediction: String,
}

impl Generator {
    /// Events get times spread over the `days` days before `now`.
    pub fn new(seed: u64, now: DateTime<Utc>, days: u32) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            now,
            days: days.max(1),
            customers: 50_000,
            // Median basket about 110, long right tail.
            amount: LogNormal::new(110f64.ln(), 0.85).expect("constant parameters are valid"),
            // Median latency about 24 ms.
            latency: LogNormal::new(24f64.ln(), 0.45).expect("constant parameters are valid"),
            model_noise: Normal::new(0.0, 0.025).expect("constant parameters are valid"),
        }
    }

    pub fn next_pair(&mut self) -> GeneratedPair {
        let rng = &mut self.rng;
        let transaction_id = format!("tx_{:016x}", rng.random::<u64>());
        let prediction_id = format!("pred_{:016x}", rng.random::<u64>());
        let customer_id = format!("cust_{:06}", rng.random_range(0..self.customers));
        let seconds_back = rng.random_range(0..i64::from(self.days) * 86_400);
        let at = self.now
            - Duration::seconds(seconds_back)
            - Duration::milliseconds(rng.random_range(0..1000));
        let amount = (self.amount.sample(rng).clamp(5.0, 5_000.0) * 100.0).round() / 100.0;
        let (credit, base_risk) = pick_credit(rng);
        let category = pick(rng, &CATEGORIES);

        let transaction = json!({
            "transaction_id": transaction_id,
            "customer_id": customer_id,
            "amount": amount,
            "transaction_timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "customer_credit_score_range": credit,
            "customer_age_bracket": pick(rng, &AGES),
            "device_type": pick(rng, &DEVICES),
            "product_category": category,
        });

        // Larger baskets and travel are a little riskier.
        let risk = base_risk
            + 0.04 * (amount / 500.0).min(2.0)
            + if category == "travel" { 0.05 } else { 0.0 };
        let mut scores = [0.0; 3];
        for score in &mut scores {
            *score = round3((risk + self.model_noise.sample(rng)).clamp(0.001, 0.999));
        }
        let ensemble = round3(scores.iter().sum::<f64>() / 3.0);
        let selected_model = pick(rng, &SELECTED);
        let selected_prediction = match selected_model {
            "ridge" => scores[0],
            "logistic" => scores[1],
            "elastic" => scores[2],
            _ => ensemble,
        };
        let latency_ms = (self.latency.sample(rng).clamp(2.0, 2_000.0) * 10.0).round() / 10.0;
        let predicted_at = at + Duration::microseconds((latency_ms * 1000.0) as i64);

        let prediction = json!({
            "prediction_id": prediction_id,
            "transaction_id": transaction_id,
            "customer_id": customer_id,
            "model_predictions": {
                "ridge": scores[0],
                "logistic": scores[1],
                "elastic": scores[2],
                "ensemble": ensemble,
            },
            "selected_model": selected_model,
            "selected_prediction": selected_prediction,
            "business_decision": decision(selected_prediction),
            "risk_level": risk_level(selected_prediction),
            "processing_time_ms": latency_ms,
            "prediction_timestamp": predicted_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        GeneratedPair {
            transaction: transaction.to_string(),
            prediction: prediction.to_string(),
        }
    }
}

/// The decision policy applied to the selected score.
pub fn decision(score: f64) -> &'static str {
    if score < APPROVE_BELOW {
        DECISIONS[0]
    } else if score < REVIEW_BELOW {
        DECISIONS[1]
    } else {
        DECISIONS[2]
    }
}

pub fn risk_level(score: f64) -> &'static str {
    if score < 0.2 {
        RISK_LEVELS[0]
    } else if score < 0.4 {
        RISK_LEVELS[1]
    } else {
        RISK_LEVELS[2]
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn pick_credit(rng: &mut StdRng) -> (&'static str, f64) {
    let mut roll = rng.random::<f64>();
    for (name, share, risk) in CREDIT {
        if roll < share {
            return (name, risk);
        }
        roll -= share;
    }
    (CREDIT[1].0, CREDIT[1].2)
}

fn pick(rng: &mut StdRng, table: &[(&'static str, f64)]) -> &'static str {
    let mut roll = rng.random::<f64>() * table.iter().map(|(_, w)| w).sum::<f64>();
    for (name, weight) in table {
        if roll < *weight {
            return name;
        }
        roll -= weight;
    }
    table.last().map(|(name, _)| *name).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event;
    use crate::keys::EventKind;
    use serde_json::Value;
    use std::collections::HashSet;

    fn sample(n: usize) -> Vec<(Value, Value)> {
        let now = Utc::now();
        let mut generator = Generator::new(7, now, 5);
        (0..n)
            .map(|_| {
                let pair = generator.next_pair();
                (
                    serde_json::from_str(&pair.transaction).expect("json"),
                    serde_json::from_str(&pair.prediction).expect("json"),
                )
            })
            .collect()
    }

    #[test]
    fn every_event_passes_validation() {
        let mut generator = Generator::new(1, Utc::now(), 3);
        for _ in 0..500 {
            let pair = generator.next_pair();
            let rules = event::DoorRules::default();
            for (kind, text) in [
                (EventKind::Transaction, &pair.transaction),
                (EventKind::Prediction, &pair.prediction),
            ] {
                let accepted = event::accept(kind, text.as_bytes(), Utc::now(), Utc::now(), &rules)
                    .expect("valid");
                assert_eq!(
                    accepted.original, *text,
                    "generated events are already one line"
                );
            }
        }
    }

    #[test]
    fn predictions_match_their_transactions_and_policy() {
        for (tx, pred) in sample(2_000) {
            assert_eq!(tx["transaction_id"], pred["transaction_id"]);
            assert_eq!(tx["customer_id"], pred["customer_id"]);
            let selected = pred["selected_model"].as_str().expect("model");
            let score = pred["selected_prediction"].as_f64().expect("score");
            assert_eq!(pred["model_predictions"][selected].as_f64(), Some(score));
            assert_eq!(pred["business_decision"], decision(score));
            assert_eq!(pred["risk_level"], risk_level(score));
            assert!((0.0..=1.0).contains(&score));
        }
    }

    #[test]
    fn distributions_are_plausible() {
        let events = sample(5_000);
        let ids: HashSet<_> = events
            .iter()
            .map(|(tx, _)| tx["transaction_id"].to_string())
            .collect();
        assert_eq!(ids.len(), events.len(), "ids are unique");
        let days: HashSet<_> = events
            .iter()
            .map(|(tx, _)| {
                tx["transaction_timestamp"].as_str().unwrap_or_default()[..10].to_owned()
            })
            .collect();
        assert!(days.len() >= 5, "times spread over several days: {days:?}");
        let decisions: HashSet<_> = events
            .iter()
            .map(|(_, p)| p["business_decision"].to_string())
            .collect();
        assert_eq!(decisions.len(), 3, "all decisions occur");
        let mut amounts: Vec<f64> = events
            .iter()
            .filter_map(|(tx, _)| tx["amount"].as_f64())
            .collect();
        amounts.sort_by(f64::total_cmp);
        let median = amounts[amounts.len() / 2];
        assert!((80.0..150.0).contains(&median), "median basket {median}");
        let mobile = events
            .iter()
            .filter(|(tx, _)| tx["device_type"] == "mobile")
            .count() as f64;
        assert!((0.55..0.70).contains(&(mobile / events.len() as f64)));
    }

    #[test]
    fn same_seed_same_events() {
        let now = Utc::now();
        let a = Generator::new(42, now, 2).next_pair();
        let b = Generator::new(42, now, 2).next_pair();
        assert_eq!(a.transaction, b.transaction);
    }
}
