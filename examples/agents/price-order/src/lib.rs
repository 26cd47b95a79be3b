//! Prices an order: a customer and its lines in, each line priced with the customer's
//! discount and the order's tax out. An ordinary agent of the kind the benchmarks measure
//! besides the trivial `echo`: ~1 KB of JSON parsed into typed structs, ~1 KB built back.

use braid_sdk::{Context, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    order_id: String,
    currency: String,
    customer: Customer,
    lines: Vec<Line>,
    #[serde(default)]
    coupon: Option<String>,
    #[serde(default)]
    tax_rate_percent: f64,
}

#[derive(Deserialize)]
struct Customer {
    id: String,
    name: String,
    tier: Tier,
    #[serde(default)]
    country: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Tier {
    Basic,
    Silver,
    Gold,
}

#[derive(Deserialize)]
struct Line {
    sku: String,
    description: String,
    quantity: u32,
    unit_price_cents: u64,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Serialize)]
struct Priced {
    order_id: String,
    customer_id: String,
    customer_name: String,
    currency: String,
    lines: Vec<PricedLine>,
    subtotal_cents: u64,
    discount_cents: u64,
    tax_cents: u64,
    total_cents: u64,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct PricedLine {
    sku: String,
    description: String,
    quantity: u32,
    gross_cents: u64,
    discount_cents: u64,
    net_cents: u64,
    fragile: bool,
}

fn price(_ctx: Context, order: Order) -> Result<Priced, Error> {
    if order.lines.is_empty() {
        return Err(Error::fatal("an order needs at least one line"));
    }
    let mut discount_percent: u64 = match order.customer.tier {
        Tier::Basic => 0,
        Tier::Silver => 5,
        Tier::Gold => 10,
    };
    let mut notes = Vec::new();
    if order.coupon.as_deref() == Some("WELCOME") {
        discount_percent += 5;
        notes.push("coupon WELCOME: 5% off".to_owned());
    }
    let lines: Vec<PricedLine> = order
        .lines
        .into_iter()
        .map(|line| {
            let gross_cents = line.unit_price_cents * u64::from(line.quantity);
            let discount_cents = gross_cents * discount_percent / 100;
            PricedLine {
                fragile: line.tags.iter().any(|tag| tag == "fragile"),
                sku: line.sku,
                description: line.description,
                quantity: line.quantity,
                gross_cents,
                discount_cents,
                net_cents: gross_cents - discount_cents,
            }
        })
        .collect();
    let subtotal_cents: u64 = lines.iter().map(|line| line.gross_cents).sum();
    let discount_cents: u64 = lines.iter().map(|line| line.discount_cents).sum();
    let net_cents = subtotal_cents - discount_cents;
    let tax_cents = (net_cents as f64 * order.tax_rate_percent / 100.0).round() as u64;
    if lines.iter().any(|line| line.fragile) {
        notes.push("contains fragile items: pack separately".to_owned());
    }
    if !order.customer.country.is_empty() {
        notes.push(format!("ships to {}", order.customer.country));
    }
    Ok(Priced {
        order_id: order.order_id,
        customer_id: order.customer.id,
        customer_name: order.customer.name,
        currency: order.currency,
        lines,
        subtotal_cents,
        discount_cents,
        tax_cents,
        total_cents: net_cents + tax_cents,
        notes,
    })
}

braid_sdk::export_agent!(price);
