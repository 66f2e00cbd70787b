"""This project's own features: the fraud-detection set. Add a feature by adding a module here."""
