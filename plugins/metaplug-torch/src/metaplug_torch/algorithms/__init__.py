"""The seven torch algorithms; each module imports torch."""
