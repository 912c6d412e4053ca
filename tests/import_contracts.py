"""A contract type of our own for import-linter (registered in pyproject.toml's [tool.importlinter]).

`standard_library_only`: the source modules import nothing but the standard library and each other. The built-in
contracts can forbid a list of named packages, but not "anything outside the standard library": a package that
nobody thought to list would slip through. This one asks Python's own list (`sys.stdlib_module_names`) instead.

Options:
    source_modules     module expressions (wildcards allowed, e.g. "renderq.*")
    exclude_modules    module expressions taken back out of source_modules (optional)
    ignore_imports     the allowed exceptions, as import expressions ("renderq.packing -> blender_asset_tracer")
"""

from __future__ import annotations

import sys
from typing import Any

import grimp
from importlinter.application import contract_utils, output
from importlinter.application.contract_utils import AlertLevel
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck
from importlinter.domain.helpers import module_expressions_to_modules


class StandardLibraryOnlyContract(Contract):
    """The source modules import only the standard library and one another."""

    type_name = "standard_library_only"

    source_modules = fields.SetField(subfield=fields.ModuleExpressionField())
    exclude_modules = fields.SetField(subfield=fields.ModuleExpressionField(), required=False)
    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    unmatched_ignore_imports_alerting = fields.EnumField(AlertLevel, default=AlertLevel.ERROR)

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        """Every direct import of a source module that is neither the standard library nor a source module."""
        if str(self.session_options.get("include_external_packages")).lower() != "true":
            # Without it the graph holds no outside package at all, and every module would pass unseen.
            raise ValueError("a standard_library_only contract needs include_external_packages = true")
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph,
            ignore_imports=self.ignore_imports,
            unmatched_alerting=self.unmatched_ignore_imports_alerting,
        )
        sources = self._names(graph, self.source_modules) - self._names(graph, self.exclude_modules)
        outside = []
        for importer in sorted(sources):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if imported in sources or imported.split(".")[0] in sys.stdlib_module_names:
                    continue
                details = graph.get_import_details(importer=importer, imported=imported)
                outside.append((importer, imported, sorted(detail["line_number"] for detail in details)))
        return ContractCheck(
            kept=not outside,
            warnings=list(removal.warnings),
            ignored_import_count=removal.ignored_import_count,
            metadata={"outside": outside},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per import that leaves the standard library."""
        for importer, imported, lines in check.metadata["outside"]:
            where = ", ".join(f"l.{line}" for line in lines)
            output.print_error(f"{importer} imports {imported} ({where}): neither the standard library nor one of "
                               "this contract's modules", bold=False)
        output.new_line()

    @staticmethod
    def _names(graph: grimp.ImportGraph, expressions: Any) -> set[str]:
        if not expressions:
            return set()
        modules = module_expressions_to_modules(graph, expressions, raise_if_unmatched=True)
        return {module.name for module in modules}
