# ctest fixture: installs tests/web's npm packages when they are missing.
# Fails (never skips) when npm cannot install them.
if(EXISTS "${DIR}/node_modules/openai/package.json" AND
   EXISTS "${DIR}/node_modules/playwright-core/package.json")
  return()
endif()
execute_process(COMMAND npm install --no-audit --no-fund --loglevel=error
                WORKING_DIRECTORY "${DIR}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "npm install in ${DIR} failed (${rc}): the web tests need openai and playwright-core")
endif()
