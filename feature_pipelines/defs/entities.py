"""Entities of the fraud-detection example."""

from feature_pipelines import Entity

# Customers are keyed by a surrogate of their identity, so no PII lands in the feature store.
customer = Entity("customer", join_key="customer_id", from_columns=["first_name", "last_name", "date_of_birth"])
merchant = Entity("merchant", join_key="merchant_id")
customer_merchant = Entity.composite("customer_merchant", customer, merchant)
