"""Streamlit building blocks. Only these modules and the pages import streamlit."""
