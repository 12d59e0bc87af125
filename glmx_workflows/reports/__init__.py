"""glmx_workflows.reports"""
